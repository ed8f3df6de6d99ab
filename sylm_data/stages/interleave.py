"""interleave: `tokenized` rows -> samples of text and speech segments -> WebDataset shards.

A sample is one utterance (`context = "utterance"`), or a document of consecutive utterances of
one recording (`context = "recording"`, see `documents.recordings`). Each utterance is cut into chunks where a unit boundary meets a gap between words (word
granularity), or only at sentence ends too (sentence granularity). A sample's kind is drawn
(interleaved / speech / text, `kinds` proportions); in an interleaved sample Poisson-sized spans
of chunks become speech until speech holds `speech_ratio` of the words. The random stream of a
sample comes from the seed and the sample's id only, so the output does not depend on workers or
partitions. Rows land in `DIR/interleave/`; workers then write each partition's samples, in key
order, into `DIR/shards/` (byte-identical for the same input and config), `index.json` lists
them all and a dataset card (README.md) tells generic readers (`datasets.load_dataset(DIR/shards)`)
the samples' schema (`pipeline.shards.publish`, `schemas.sample.dataset_card`).
"""

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from sylm_data.documents import publish, recordings, render, spans
from sylm_data.documents.utterances import Plan, Utterances, utterance_chunks
from sylm_data.pipeline.stage import Stage, StageConfigError
from sylm_data.schemas import sample

NAME = "interleave"
TITLE = "sylm-data interleaved speech–text samples"  # the shards' dataset card


@dataclass
class InterleaveConfig:
    # 2: speech spans by randomised rounding (spans.choose_speech); 3: source_ids, recording context;
    # 4: member rows hold their chunks, offsets and units as lists
    ROWS_VERSION: ClassVar[int] = 4
    context: str = "utterance"  # utterance | recording: a sample is one utterance, or consecutive ones of a recording
    max_document_ms: int = 120_000  # recording context: the most audio a document holds
    max_gap_ms: int = 3_000  # recording context: a longer silence between two utterances starts a new document
    same_speaker: bool = False  # recording context: a change of speaker starts a new document
    members_per_bucket: int = 50_000  # recording context: utterances per shuffle bucket (one task, one shard group)
    granularity: str = "word"  # word | sentence
    speech_ratio: float = 0.3  # speech words over all words in interleaved samples (3:7)
    span_mean: float = 10.0  # Poisson mean of a speech span: words (word) or sentences (sentence)
    kinds: dict[str, float] = field(default_factory=lambda: {"interleaved": 0.55, "speech": 0.25, "text": 0.20})
    tolerance_ms: int = 10  # half of the 20 ms unit grid
    seed: int = 0
    shard_bytes: int = 256 * 2**20
    min_shards: int = 1  # at least this many shards (samples allowing): >= ranks x DataLoader workers of a plain WebDataset reader


def preflight(config: InterleaveConfig) -> None:
    if config.granularity not in ("word", "sentence"):
        raise StageConfigError(f"granularity must be word or sentence, not {config.granularity!r}")
    if set(config.kinds) - set(sample.KINDS) or not sum(config.kinds.values()) > 0 or min(config.kinds.values()) < 0:
        raise StageConfigError(f"kinds must weight {', '.join(sample.KINDS)} (non-negative, not all zero), got {config.kinds}")
    if not 0 <= config.speech_ratio <= 1:
        raise StageConfigError(f"speech_ratio must be within 0..1, got {config.speech_ratio}")
    if config.context not in ("utterance", "recording"):
        raise StageConfigError(f"context must be utterance or recording, not {config.context!r}")
    if config.max_document_ms <= 0 or config.max_gap_ms < 0 or config.members_per_bucket < 1:
        raise StageConfigError("max_document_ms and members_per_bucket must be above 0, max_gap_ms at least 0")
    publish.check_shard_options(config)


def draw_kinds(kinds: dict[str, float], draws: np.ndarray) -> np.ndarray:
    """For each draw (uniform in [0, 1)), the kind whose share of the cumulative weights holds it."""
    weights = np.array(list(kinds.values()), np.float64)
    shares = np.cumsum(weights / weights.sum())
    return np.array(list(kinds))[np.minimum(np.searchsorted(shares, draws, side="right"), len(kinds) - 1)]


def plan_interleaved(utterances: Utterances, rows: np.ndarray, config: InterleaveConfig) -> Plan:
    """Draw each sample's kind; in interleaved ones, Poisson spans of chunks become speech (runs of
    one modality make one segment); speech and text samples are one whole segment."""
    keys = spans.stream_keys(config.seed, utterances.ids.take(rows))
    kinds = draw_kinds(config.kinds, spans.uniforms(keys, 0))
    mixed = kinds == "interleaved"
    chunked = utterance_chunks(utterances, rows[mixed])
    speech = spans.choose_speech(chunked.words, np.searchsorted(rows[mixed], chunked.rows), keys[mixed], config.speech_ratio,
                                 config.span_mean, span_in_words=config.granularity == "word", first_draw=1)
    mixed_runs, mixed_speech = spans.runs(chunked, speech)
    plain = rows[~mixed]
    nothing = np.zeros(len(plain), np.int64)
    whole = spans.Pieces(plain, nothing, utterances.word_sizes[plain], nothing, utterances.unit_sizes[plain])
    # one run only (one chunk, or no span fitted): a plain sample of that modality
    single = mixed.copy()
    single[mixed] = np.bincount(np.searchsorted(rows[mixed], mixed_runs.rows), minlength=mixed.sum()) == 1
    kinds[single] = np.where(mixed_speech[np.searchsorted(mixed_runs.rows, rows[single])], "speech", "text")
    order = np.argsort(np.concatenate([mixed_runs.rows, plain]), kind="stable")
    segments = spans.Pieces(*(np.concatenate(pair)[order] for pair in zip(mixed_runs, whole)))
    return Plan(kinds.tolist(), segments, np.concatenate([mixed_speech, kinds[~mixed] == "speech"])[order])


def choose_document_speech(keys: np.ndarray, chunk_words: np.ndarray, chunk_owner: np.ndarray,
                           config: InterleaveConfig) -> tuple[np.ndarray, np.ndarray]:
    """Recording context: each document's kind, drawn as an utterance's is, and which of its chunks
    are speech: all of a speech document's, none of a text one's, and Poisson spans of an
    interleaved one's up to `speech_ratio` of its words (`spans.choose_speech`)."""
    if (chunk_owner[1:] < chunk_owner[:-1]).any() or (len(chunk_owner) and not 0 <= chunk_owner[0] <= chunk_owner[-1] < len(keys)):
        raise ValueError(f"each chunk's document must be one of the {len(keys)}, ascending")
    kinds = draw_kinds(config.kinds, spans.uniforms(keys, 0))
    bounds = np.searchsorted(chunk_owner, np.arange(len(keys) + 1))  # each document's chunks
    mixed = np.flatnonzero(kinds == "interleaved")
    speech = spans.choose_speech_in(chunk_words, bounds[mixed], bounds[mixed + 1], keys[mixed], config.speech_ratio,
                                    config.span_mean, span_in_words=config.granularity == "word", first_draw=1)
    speech |= np.repeat(kinds == "speech", np.diff(bounds))
    return kinds, speech


def transform(batch: pa.Table, config: InterleaveConfig) -> pa.Table:
    """Utterance context: one sample row per utterance. Recording context: one member row per
    utterance, its chunks ready to be joined into documents by `write_shards`."""
    if config.context == "recording":
        return recordings.member_rows(batch, config, NAME)
    return render.build_samples(batch, config, plan_interleaved, NAME)


def write_shards(config: InterleaveConfig, folder: Path, parallel) -> dict:
    """The committed sample rows into DIR/shards, partition by partition (see `publish_samples`);
    in recording context, the documents assembled from the member rows, whose tasks write their
    shards and commit their rows (DIR/documents/), then the index."""
    shards, extra_index = folder.parent / "shards", {"config_hash": publish.config_digest(config)}
    if config.context == "recording":
        stamps = recordings.assemble(folder, folder.parent / recordings.DOCUMENTS, shards, config, parallel,
                                     functools.partial(choose_document_speech, config=config))
        index = publish.publish_stamped(shards, stamps, recordings.unwritten, parallel, extra_index, title=TITLE)
    else:
        index = publish.publish_samples(folder, shards, config.shard_bytes, extra_index, parallel, min_shards=config.min_shards,
                                        title=TITLE)
    return {"shards": len(index["shards"]), "samples": index["total_samples"],
            "speech_text_ratio": index["stats"].get("speech_text_ratio")}


STAGE = Stage(
    name=NAME,
    consumes="tokenize",
    contract=sample.ROW_SCHEMA,
    description="tokenized rows -> interleaved / speech / text samples -> DIR/shards/ (WebDataset)",
    config_type=InterleaveConfig,
    make_transform=lambda config: functools.partial(transform, config=config),
    preflight=preflight,
    finalize=write_shards,
    rows_per_call=render.ROWS_PER_CALL,
)
