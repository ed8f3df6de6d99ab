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
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def sample_rng(seed: int, sample_id: str) -> spans.SampleRandom:
    """The random stream of one sample, from the seed and its id alone."""
    return spans.SampleRandom(int.from_bytes(hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest(), "little"))


class Utterance(NamedTuple):
    """What a sample is built from: one tokenized row's transcript, timed words and timed units."""
    id: str
    text: str
    language: str
    words: list[str]
    word_starts: list[int]
    word_ends: list[int]
    units: list[int]
    unit_starts: list[int]
    unit_ends: list[int]

    @classmethod
    def from_row(cls, row: dict) -> "Utterance":
        words = row[aligned.WORDS] or []
        return cls(row[utterance.ID], row[utterance.TEXT], row[utterance.LANGUAGE],
                   [w[aligned.WORD_TEXT] for w in words], [w[aligned.WORD_START_MS] for w in words],
                   [w[aligned.WORD_END_MS] for w in words], row[tokenized.UNITS] or [],
                   row[tokenized.UNIT_START_MS] or [], row[tokenized.UNIT_END_MS] or [])


def build_sample(item: Utterance, config: InterleaveConfig) -> dict:
    """One utterance -> the sample-row columns; raises Rejected."""
    problem = unusable([len(item.words)], item.word_starts[:1], item.word_ends[-1:], [len(item.units)],
                       item.unit_starts[:1], item.unit_ends[-1:])[0]
    if problem:
        raise Rejected(*problem)
    cuts = spans.word_cuts(item.word_starts, item.word_ends, item.unit_starts, item.unit_ends, config.tolerance_ms)
    return render(item.id, item.text, item.language, item.words, item.units, cuts, config)


def unusable(word_sizes, first_word_starts, last_word_ends, unit_sizes, first_unit_starts,
             last_unit_ends) -> list[tuple[str, str] | None]:
    """Per utterance, (reason, detail) when no sample can be made of it: no words, no units, or
    words and units that do not overlap in time. Firsts and lasts are given for non-empty ones only."""
    word_sizes, unit_sizes = np.asarray(word_sizes), np.asarray(unit_sizes)
    both = (word_sizes > 0) & (unit_sizes > 0)
    first_word, last_word, first_unit, last_unit = (np.zeros(len(word_sizes), np.int64) for _ in range(4))
    first_word[word_sizes > 0], last_word[word_sizes > 0] = first_word_starts, last_word_ends
    first_unit[unit_sizes > 0], last_unit[unit_sizes > 0] = first_unit_starts, last_unit_ends
    disjoint = both & ((last_word <= first_unit) | (last_unit <= first_word))
    problems: list[tuple[str, str] | None] = [None] * len(word_sizes)
    for index in np.flatnonzero(~both | disjoint).tolist():
        if not word_sizes[index]:
            problems[index] = (Reason.NO_WORDS, "no aligned words")
        elif not unit_sizes[index]:
            problems[index] = (Reason.NO_UNITS, "no units")
        else:
            problems[index] = (Reason.SPANS_DISJOINT, f"words {first_word[index]}-{last_word[index]} ms, "
                                                      f"units {first_unit[index]}-{last_unit[index]} ms")
    return problems


def render(sample_id: str, text: str, language: str, words: list[str], units: list[int], cuts: dict[int, int],
           config: InterleaveConfig) -> dict:
    """The sample of a usable utterance, given its allowed cuts (`spans.word_cuts`)."""
    rng = sample_rng(config.seed, sample_id)
    kind = _draw_kind(config.kinds, rng.random())
    if kind == "speech":
        segments, speech_words = [{sample.MODALITY: sample.SPEECH, sample.UNITS: list(units)}], len(words)
    elif kind == "text":  # the transcript itself, from its first word
        segments, speech_words = [{sample.MODALITY: sample.TEXT, sample.TEXT: text[max(text.find(words[0]), 0):].strip()}], 0
    else:
        allowed = spans.sentence_ends(text, words) if config.granularity == "sentence" else None
        pieces = spans.chunks(len(words), len(units), cuts, allowed)
        sizes = [end - first for first, end, _, _ in pieces]
        speech = spans.choose_speech(sizes, config.speech_ratio, config.span_mean, rng, span_in_words=config.granularity == "word")
        segments = _segments(pieces, speech, text, words, units)
        speech_words = sum(size for size, spoken in zip(sizes, speech) if spoken)
        if len(segments) == 1:  # one chunk, or no span fitted: a plain sample
            kind = "speech" if segments[0][sample.MODALITY] == sample.SPEECH else "text"
    document = {sample.SEGMENTS: segments, sample.KIND: kind, sample.LANGUAGE: language, sample.SOURCE_ID: sample_id}
    return {
        sample.ROW_KIND: kind, sample.ROW_LANGUAGE: language,
        sample.ROW_JSON: COMPACT_JSON.encode(document),
        sample.ROW_WORDS: len(words), sample.ROW_SPEECH_WORDS: speech_words if kind != "text" else 0,
        sample.ROW_UNITS: sum(len(s[sample.UNITS]) for s in segments if s[sample.MODALITY] == sample.SPEECH),
    }


COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one encoder: building one costs more than a short sample


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
    runs: list[list] = []  # [is speech, first chunk, last chunk]
    for index, is_speech in enumerate(speech):
        if runs and runs[-1][0] == is_speech:
            runs[-1][2] = index
        else:
            runs.append([is_speech, index, index])
    offsets = languages.word_offsets(transcript, texts) + [len(transcript)] if not all(speech) else None
    segments: list[dict] = []
    for is_speech, first, last in runs:
        if is_speech:
            segments.append({sample.MODALITY: sample.SPEECH, sample.UNITS: units[pieces[first].first_unit : pieces[last].end_unit]})
        else:
            text = transcript[offsets[pieces[first].first_word] : offsets[pieces[last].end_word]].strip()
            segments.append({sample.MODALITY: sample.TEXT, sample.TEXT: text})
    return segments


OUTPUT_SCHEMA = stream.in_flight(sample.ROW_SCHEMA)
_PAYLOAD = [name for name in sample.ROW_SCHEMA.names if name not in (sample.ROW_KEY, sample.ROW_SOURCE)]


def transform(batch: pa.Table, config: InterleaveConfig, build=render) -> pa.Table:
    """Column-wise: lists are read flat from Arrow (the audio column is never copied), checks and
    cuts run vectorised over the batch, and only each sample's choices and JSON run row by row.
    `build` makes one row's sample columns (the pairs stage passes its own)."""
    pending = pc.is_null(batch[stream.REJECT_REASON]).to_numpy(zero_copy_only=False)
    unit_lengths = [_sizes(batch[name]) for name in (tokenized.UNITS, tokenized.UNIT_START_MS, tokenized.UNIT_END_MS)]
    mismatched = pending & ((unit_lengths[0] != unit_lengths[1]) | (unit_lengths[0] != unit_lengths[2]))
    # only rows still to build contribute values: the flat arrays then line up with the sizes
    words = batch[aligned.WORDS].filter(pa.array(pending))
    units, unit_starts, unit_ends = (batch[name].filter(pa.array(pending & ~mismatched))
                                     for name in (tokenized.UNITS, tokenized.UNIT_START_MS, tokenized.UNIT_END_MS))
    word_sizes = np.zeros(batch.num_rows, np.int64)
    word_sizes[pending] = _sizes(words)
    unit_sizes = np.where(pending & ~mismatched, unit_lengths[0], 0)
    word_bounds, unit_bounds = (np.concatenate([[0], np.cumsum(sizes)]) for sizes in (word_sizes, unit_sizes))
    word_starts, word_ends = (_flat(pc.struct_field(pc.list_flatten(words), name))
                              for name in (aligned.WORD_START_MS, aligned.WORD_END_MS))
    unit_starts, unit_ends = _flat(pc.list_flatten(unit_starts)), _flat(pc.list_flatten(unit_ends))
    problems = unusable(word_sizes, word_starts[word_bounds[:-1][word_sizes > 0]], word_ends[word_bounds[1:][word_sizes > 0] - 1],
                        unit_sizes, unit_starts[unit_bounds[:-1][unit_sizes > 0]], unit_ends[unit_bounds[1:][unit_sizes > 0] - 1])
    for index in np.flatnonzero(mismatched).tolist():
        problems[index] = (Reason.NO_UNITS, "units and their start/end times differ in length")
    cuts = spans.batch_word_cuts(word_sizes, word_starts, word_ends, unit_sizes, unit_starts, unit_ends, config.tolerance_ms)
    word_texts = pc.struct_field(pc.list_flatten(words), aligned.WORD_TEXT).to_pylist()
    unit_ids = pc.list_flatten(units).to_pylist()
    ids, texts, languages_, tokenizers = (batch[name].to_pylist() for name in (utterance.ID, utterance.TEXT, utterance.LANGUAGE,
                                                                              tokenized.TOKENIZER))
    envelope = {name: batch[name].to_pylist() for name in (stream.REJECT_STAGE, stream.REJECT_REASON, stream.REJECT_DETAIL)}
    payload = {name: [None] * batch.num_rows for name in _PAYLOAD if name not in stream.ENVELOPE_NAMES}
    word_bounds, unit_bounds = word_bounds.tolist(), unit_bounds.tolist()
    for index in range(batch.num_rows):
        if envelope[stream.REJECT_REASON][index] is not None:
            continue
        if problems[index]:
            reason, detail = problems[index]
            envelope[stream.REJECT_STAGE][index], envelope[stream.REJECT_REASON][index] = NAME, str(reason)
            envelope[stream.REJECT_DETAIL][index] = detail
            continue
        built = build(ids[index], texts[index], languages_[index],
                       word_texts[word_bounds[index] : word_bounds[index + 1]],
                       unit_ids[unit_bounds[index] : unit_bounds[index + 1]], cuts[index], config)
        for name, value in built.items():
            payload[name][index] = value
        payload[sample.ROW_TOKENIZER][index] = tokenizers[index]
    columns = {sample.ROW_KEY: batch[utterance.ID], sample.ROW_SOURCE: batch[utterance.SOURCE],
               stream.PARTITION: batch[stream.PARTITION], stream.PARTITION_TOTAL: batch[stream.PARTITION_TOTAL]}
    return pa.table(columns | payload | envelope, schema=OUTPUT_SCHEMA).select(OUTPUT_SCHEMA.names)


def _sizes(lists: pa.ChunkedArray) -> np.ndarray:
    """Each row's list length (0 for null)."""
    return pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _flat(values) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False).astype(np.int64)


def _ratio(stats: dict) -> dict:
    words = stats.get("interleaved_words", 0)
    return {"speech_text_ratio": round(stats.get("interleaved_speech_words", 0) / words, 4) if words else None}


def committed_samples(folder: Path) -> tuple[pa.Table, dict]:
    """A sample-row stage's committed rows in key order, and the unit vocabulary they share."""
    table = read_rows(folder)
    if not table.num_rows:
        raise ValueError(f"{folder} holds no samples: nothing to shard")
    tokenizers = pc.unique(table[sample.ROW_TOKENIZER]).to_pylist()
    if len(tokenizers) != 1:
        raise ValueError(f"{folder} holds samples of {len(tokenizers)} tokenizers ({', '.join(sorted(tokenizers)[:3])}): "
                         "their unit ids mean different things; tokenize all partitions with one codebook")
    vocabulary = {sample.INDEX_TOKENIZER: tokenizers[0], sample.INDEX_UNIT_VOCAB: tokenized.unit_vocabulary(tokenizers[0])}
    return table.sort_by(sample.ROW_KEY), vocabulary


def config_digest(config) -> str:
    return hashlib.sha256(repr(sorted(vars(config).items())).encode()).hexdigest()[:16]


def shard_samples(table: pa.Table, target: Path, shard_bytes: int, described: dict) -> dict:
    """Sample rows (in their order) into the shard folder `target`, replaced whole; its index.json."""
    staging = target.parent / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with ShardWriter(staging, shard_bytes, extra_index=described, derive=_ratio) as writer:
        columns = [table[name].to_pylist() for name in (sample.ROW_KEY, sample.ROW_JSON, sample.ROW_KIND,
                                                         sample.ROW_WORDS, sample.ROW_SPEECH_WORDS, sample.ROW_UNITS)]
        for key, document, kind, words, speech_words, units in zip(*columns):
            stats = {f"{kind}_samples": 1, "words": words, "units": units}
            if kind == "interleaved":
                stats |= {"interleaved_words": words, "interleaved_speech_words": speech_words}
            writer.write(key, {"json": document.encode()}, stats)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return json.loads((target / "index.json").read_text())


def write_shards(config: InterleaveConfig, folder: Path) -> dict:
    """All committed sample rows, in key order, into DIR/shards (replaced whole, then index.json)."""
    table, vocabulary = committed_samples(folder)
    index = shard_samples(table, folder.parent / "shards", config.shard_bytes, {"config_hash": config_digest(config)} | vocabulary)
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
