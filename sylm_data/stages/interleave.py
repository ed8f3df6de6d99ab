"""interleave: `tokenized` rows -> samples of text and speech segments -> WebDataset shards.

Each utterance is cut into chunks where a unit boundary meets a gap between words (word
granularity), or only at sentence ends too (sentence granularity). A sample's kind is drawn
(interleaved / speech / text, `kinds` proportions); in an interleaved sample Poisson-sized spans
of chunks become speech until speech holds `speech_ratio` of the words. The random stream of a
sample comes from the seed and the sample's id only, so the output does not depend on workers or
partitions. Rows land in `DIR/interleave/`; once every partition is in, the driver writes
`DIR/shards/` in key order (byte-identical for the same input and config) with `index.json`.
"""

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from sylm_data import languages
from sylm_data.pipeline.output import read_rows
from sylm_data.pipeline.shards import ShardWriter
from sylm_data.pipeline.stage import Rejected, Stage, StageConfigError
from sylm_data.schemas import aligned, sample, stream, tokenized, utterance
from sylm_data.schemas.reject import Reason
from sylm_data.stages import spans

NAME = "interleave"


@dataclass
class InterleaveConfig:
    granularity: str = "word"  # word | sentence
    speech_ratio: float = 0.3  # speech words over all words in interleaved samples (3:7)
    span_mean: float = 10.0  # Poisson mean of a speech span: words (word) or sentences (sentence)
    kinds: dict[str, float] = field(default_factory=lambda: {"interleaved": 0.55, "speech": 0.25, "text": 0.20})
    tolerance_ms: int = 10  # half of the 20 ms unit grid
    seed: int = 0
    shard_bytes: int = 256 * 2**20


def preflight(config: InterleaveConfig) -> None:
    if config.granularity not in ("word", "sentence"):
        raise StageConfigError(f"granularity must be word or sentence, not {config.granularity!r}")
    if set(config.kinds) - set(sample.KINDS) or not config.kinds or min(config.kinds.values()) < 0:
        raise StageConfigError(f"kinds must weight {', '.join(sample.KINDS)} (non-negative), got {config.kinds}")
    if not 0 <= config.speech_ratio <= 1:
        raise StageConfigError(f"speech_ratio must be within 0..1, got {config.speech_ratio}")


_BIT_GENERATOR = np.random.PCG64(0)
_GENERATOR = np.random.Generator(_BIT_GENERATOR)


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """The random stream of one sample, from the seed and its id alone.

    One generator is reset for each sample (a fresh Generator costs three times as much as the
    rest of a short sample's work): draw from it before asking for the next sample's."""
    digest = int.from_bytes(hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=16).digest(), "little")
    _BIT_GENERATOR.state = {"bit_generator": "PCG64", "state": {"state": digest, "inc": (digest >> 64) | 1},
                            "has_uint32": 0, "uinteger": 0}
    return _GENERATOR


def build_sample(row: dict, config: InterleaveConfig) -> dict:
    """One tokenized row -> the sample-row columns; raises Rejected."""
    words, units = row[aligned.WORDS] or [], row[tokenized.UNITS] or []
    if not words:
        raise Rejected(Reason.NO_WORDS, "no aligned words")
    if not units:
        raise Rejected(Reason.NO_UNITS, "no units")
    unit_starts, unit_ends = row[tokenized.UNIT_START_MS], row[tokenized.UNIT_END_MS]
    word_starts = [w[aligned.WORD_START_MS] for w in words]
    word_ends = [w[aligned.WORD_END_MS] for w in words]
    if word_ends[-1] <= unit_starts[0] or unit_ends[-1] <= word_starts[0]:
        raise Rejected(Reason.SPANS_DISJOINT, f"words {word_starts[0]}-{word_ends[-1]} ms, units {unit_starts[0]}-{unit_ends[-1]} ms")
    texts = [w[aligned.WORD_TEXT] for w in words]
    transcript = row[utterance.TEXT]
    cuts = spans.word_cuts(word_starts, word_ends, unit_starts, unit_ends, config.tolerance_ms)
    allowed = spans.sentence_ends(transcript, texts) if config.granularity == "sentence" else None
    pieces = spans.chunks(len(words), len(units), cuts, allowed)

    rng = sample_rng(config.seed, row[utterance.ID])
    kind = _draw_kind(config.kinds, rng.random())
    if kind == "interleaved":
        speech = spans.choose_speech([c.words for c in pieces], config.speech_ratio, config.span_mean, rng,
                                     span_in_words=config.granularity == "word")
    else:
        speech = [kind == "speech"] * len(pieces)
    segments = _segments(pieces, speech, transcript, texts, units)
    modalities = {segment[sample.MODALITY] for segment in segments}
    if kind == "interleaved" and len(modalities) == 1:  # one chunk, or no span fitted: a plain sample
        kind = "speech" if sample.SPEECH in modalities else "text"
    document = {sample.SEGMENTS: segments, sample.KIND: kind, sample.LANGUAGE: row[utterance.LANGUAGE],
                sample.SOURCE_ID: row[utterance.ID]}
    sample.validate(document)
    speech_words = sum(c.words for c, s in zip(pieces, speech) if s)
    return {
        sample.ROW_KIND: kind, sample.ROW_LANGUAGE: row[utterance.LANGUAGE],
        sample.ROW_JSON: json.dumps(document, ensure_ascii=False, separators=(",", ":")),
        sample.ROW_WORDS: len(words), sample.ROW_SPEECH_WORDS: speech_words if kind != "text" else 0,
        sample.ROW_UNITS: sum(len(s[sample.UNITS]) for s in segments if s[sample.MODALITY] == sample.SPEECH),
    }


def _draw_kind(kinds: dict[str, float], draw: float) -> str:
    """The kind whose share of the cumulative weights holds `draw` (uniform in [0, 1))."""
    total, cumulative = sum(kinds.values()), 0.0
    for kind, weight in kinds.items():
        cumulative += weight / total
        if draw < cumulative:
            return kind
    return kind


def _segments(pieces, speech, transcript: str, texts: list[str], units: list[int]) -> list[dict]:
    """Runs of chunks of one modality become one segment; text keeps the transcript's punctuation."""
    offsets = languages.word_offsets(transcript, texts) + [len(transcript)]
    segments: list[dict] = []
    for chunk, is_speech in zip(pieces, speech):
        if is_speech:
            if segments and segments[-1][sample.MODALITY] == sample.SPEECH:
                segments[-1][sample.UNITS] += units[chunk.first_unit : chunk.end_unit]
            else:
                segments.append({sample.MODALITY: sample.SPEECH, sample.UNITS: list(units[chunk.first_unit : chunk.end_unit])})
        else:
            text = transcript[offsets[chunk.first_word] : offsets[chunk.end_word]].strip()
            if segments and segments[-1][sample.MODALITY] == sample.TEXT:
                segments[-1][sample.TEXT] += " " + text
            else:
                segments.append({sample.MODALITY: sample.TEXT, sample.TEXT: text})
    return segments


OUTPUT_SCHEMA = stream.in_flight(sample.ROW_SCHEMA)
_PAYLOAD = [name for name in sample.ROW_SCHEMA.names if name not in (sample.ROW_KEY, sample.ROW_SOURCE)]


_READ = [utterance.ID, utterance.SOURCE, utterance.TEXT, utterance.LANGUAGE, aligned.WORDS,
         tokenized.UNITS, tokenized.UNIT_START_MS, tokenized.UNIT_END_MS, *stream.ENVELOPE_NAMES]


def transform(batch: pa.Table, config: InterleaveConfig) -> pa.Table:
    rows = []
    for row in batch.select(_READ).to_pylist():  # the audio column stays in Arrow: no copy
        out = {sample.ROW_KEY: row[utterance.ID], sample.ROW_SOURCE: row[utterance.SOURCE]}
        out |= {name: row[name] for name in stream.ENVELOPE_NAMES} | dict.fromkeys(_PAYLOAD)
        if out[stream.REJECT_REASON] is None:
            try:
                out.update(build_sample(row, config))
            except Rejected as rejected:
                stream.mark_rejected(out, _PAYLOAD, NAME, rejected.reason, rejected.detail)
        rows.append(out)
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def _ratio(stats: dict) -> dict:
    words = stats.get("interleaved_words", 0)
    return {"speech_text_ratio": round(stats.get("interleaved_speech_words", 0) / words, 4) if words else None}


def write_shards(config: InterleaveConfig, folder: Path) -> dict:
    """All committed sample rows, in key order, into DIR/shards (replaced whole, then index.json)."""
    table = read_rows(folder)
    if not table.num_rows:
        raise ValueError(f"{folder} holds no samples: nothing to shard")
    table = table.sort_by(sample.ROW_KEY)
    target = folder.parent / "shards"
    staging = folder.parent / ".shards.partial"
    shutil.rmtree(staging, ignore_errors=True)
    config_hash = hashlib.sha256(repr(sorted(vars(config).items())).encode()).hexdigest()[:16]
    with ShardWriter(staging, config.shard_bytes, extra_index={"config_hash": config_hash}, derive=_ratio) as writer:
        for row in table.to_pylist():
            kind = row[sample.ROW_KIND]
            stats = {f"{kind}_samples": 1, "words": row[sample.ROW_WORDS], "units": row[sample.ROW_UNITS]}
            if kind == "interleaved":
                stats |= {"interleaved_words": row[sample.ROW_WORDS], "interleaved_speech_words": row[sample.ROW_SPEECH_WORDS]}
            writer.write(row[sample.ROW_KEY], {"json": row[sample.ROW_JSON].encode()}, stats)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    index = json.loads((target / "index.json").read_text())
    return {"shards": len(index["shards"]), "samples": index["total_samples"],
            "speech_text_ratio": index["stats"]["speech_text_ratio"]}


STAGE = Stage(
    name=NAME,
    consumes="tokenize",
    contract=sample.ROW_SCHEMA,
    description="tokenized rows -> interleaved / speech / text samples -> DIR/shards/ (WebDataset)",
    config_type=InterleaveConfig,
    make_transform=lambda config: functools.partial(transform, config=config),
    preflight=preflight,
    finalize=write_shards,
)
