"""interleave: `tokenized` rows -> samples of text and speech segments -> WebDataset shards.

Each utterance is cut into chunks where a unit boundary meets a gap between words (word
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
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data import languages
from sylm_data.pipeline import shards
from sylm_data.pipeline.output import OutputLayout, read_rows
from sylm_data.pipeline.stage import Stage, StageConfigError
from sylm_data.schemas import aligned, sample, stream, tokenized, utterance
from sylm_data.schemas.reject import Reason
from sylm_data.stages import spans

NAME = "interleave"


@dataclass
class InterleaveConfig:
    ROWS_VERSION: ClassVar[int] = 2  # 2: speech spans by randomised rounding (spans.choose_speech)
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
    check_shard_options(config)


def check_shard_options(config) -> None:
    """The shard-writing options every sample stage's config has."""
    if config.shard_bytes <= 0 or config.min_shards < 1:
        raise StageConfigError(f"shard_bytes must be above 0 and min_shards at least 1, got {config.shard_bytes} "
                               f"and {config.min_shards}")


@dataclass
class Utterances:
    """A batch's utterances read flat from Arrow: list columns as one flat array plus bounds
    (utterance i's words are word_texts[word_bounds[i]:word_bounds[i + 1]])."""
    ids: list[str]
    texts: list[str]
    languages: list[str]
    word_texts: list[str]
    word_bounds: np.ndarray
    unit_ids: pa.Array
    unit_bounds: np.ndarray
    cuts: spans.Cuts
    _offsets: dict[int, list[int]] = field(default_factory=dict)

    @property
    def word_sizes(self) -> np.ndarray:
        return np.diff(self.word_bounds)

    @property
    def unit_sizes(self) -> np.ndarray:
        return np.diff(self.unit_bounds)

    def words(self, row: int) -> list[str]:
        return self.word_texts[self.word_bounds[row] : self.word_bounds[row + 1]]

    def offsets(self, row: int) -> list[int]:
        """Where each word of utterance `row` starts in its transcript, then the transcript's length."""
        if row not in self._offsets:
            self._offsets[row] = languages.word_offsets(self.texts[row], self.words(row)) + [len(self.texts[row])]
        return self._offsets[row]


class Plan(NamedTuple):
    """What the samples of some utterances (ascending rows) hold: each one's kind, and its
    segments in order (word and unit ranges), each speech or text."""
    kinds: list[str]
    segments: spans.Pieces
    speech: np.ndarray


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


def utterance_chunks(utterances: Utterances, rows: np.ndarray, granularity: str) -> spans.Pieces:
    """The chunks of utterances `rows`: cut at every allowed cut (word), or only at sentence ends."""
    cuts = utterances.cuts
    if granularity == "sentence":
        places = [(row, end) for row in rows.tolist()
                  for end in spans.sentence_ends(utterances.texts[row], utterances.words(row), utterances.offsets(row))]
        cuts = cuts.restricted_to(*np.array(places, np.int64).reshape(-1, 2).T)
    return spans.chunks(cuts, utterances.word_sizes, utterances.unit_sizes, rows)


def draw_kinds(kinds: dict[str, float], draws: np.ndarray) -> np.ndarray:
    """For each draw (uniform in [0, 1)), the kind whose share of the cumulative weights holds it."""
    weights = np.array(list(kinds.values()), np.float64)
    shares = np.cumsum(weights / weights.sum())
    return np.array(list(kinds))[np.minimum(np.searchsorted(shares, draws, side="right"), len(kinds) - 1)]


def plan_interleaved(utterances: Utterances, rows: np.ndarray, config: InterleaveConfig) -> Plan:
    """Draw each sample's kind; in interleaved ones, Poisson spans of chunks become speech (runs of
    one modality make one segment); speech and text samples are one whole segment."""
    keys = spans.stream_keys(config.seed, [utterances.ids[row] for row in rows.tolist()])
    kinds = draw_kinds(config.kinds, spans.uniforms(keys, 0))
    mixed = kinds == "interleaved"
    chunked = utterance_chunks(utterances, rows[mixed], config.granularity)
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


COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # the byte layout render writes


def render(utterances: Utterances, rows: np.ndarray, plan: Plan) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The JSON documents of utterances `rows` (byte for byte what COMPACT_JSON writes of them), and
    each one's speech words and units. Units go through Arrow's string kernels, never Python ints."""
    segments, speech = plan.segments, plan.speech
    document_of = np.searchsorted(rows, segments.rows)
    spoken = np.flatnonzero(speech)
    lengths = (segments.end_unit - segments.first_unit)[spoken]
    starts = (utterances.unit_bounds[segments.rows] + segments.first_unit)[spoken]
    # each speech segment's unit positions in the flat unit array, one range after another
    flat = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    unit_lists = pa.ListArray.from_arrays(_offsets(lengths), pc.cast(utterances.unit_ids.take(flat), pa.string()))
    speech_json = pc.binary_join_element_wise('{"modality":"speech","text":null,"units":[', pc.binary_join(unit_lists, ","),
                                              "]}", "")
    texts = _segment_texts(utterances, segments.take(np.flatnonzero(~speech)))
    text_json = pa.array(['{"modality":"text","text":' + _quoted(text) + ',"units":null}' for text in texts], pa.string())
    order = np.empty(len(speech), np.int64)
    order[spoken], order[~speech] = np.arange(len(spoken)), len(spoken) + np.arange(len(texts))
    segment_lists = pa.ListArray.from_arrays(_offsets(np.bincount(document_of, minlength=len(rows))),
                                             pa.concat_arrays([speech_json, text_json]).take(order))
    documents = pc.binary_join_element_wise(
        '{"segments":[', pc.binary_join(segment_lists, ","), '],"kind":"', pa.array(plan.kinds, pa.string()),
        '","language":', pa.array([_quoted(utterances.languages[row]) for row in rows.tolist()], pa.string()),
        ',"source_id":', pa.array([_quoted(utterances.ids[row]) for row in rows.tolist()], pa.string()),
        ',"synthetic":null}', "")
    speech_words = np.bincount(document_of[spoken], weights=segments.words[spoken], minlength=len(rows))
    units = np.bincount(document_of[spoken], weights=lengths, minlength=len(rows))
    return documents, speech_words.astype(np.int64), units.astype(np.int64)


_quoted = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept (as COMPACT_JSON writes it)


def _offsets(sizes: np.ndarray) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(sizes)]), pa.int32())


def _segment_texts(utterances: Utterances, pieces: spans.Pieces) -> list[str]:
    """Each text piece as the transcript writes it (its punctuation kept), from its first word."""
    texts, word_bounds = [], utterances.word_bounds.tolist()
    for row, first, end in zip(pieces.rows.tolist(), pieces.first_word.tolist(), pieces.end_word.tolist()):
        text = utterances.texts[row]
        if first == 0 and end == word_bounds[row + 1] - word_bounds[row]:  # the whole transcript: only its first word is looked for
            texts.append(text[max(text.find(utterances.word_texts[word_bounds[row]]), 0):].strip())
        else:
            offsets = utterances.offsets(row)
            texts.append(text[offsets[first] : offsets[end]].strip())
    return texts


OUTPUT_SCHEMA = stream.in_flight(sample.ROW_SCHEMA)


def transform(batch: pa.Table, config: InterleaveConfig, plan=plan_interleaved) -> pa.Table:
    """Column-wise: lists are read flat from Arrow (the audio column is never copied); checks, cuts,
    span choices and the JSON run vectorised over the batch. `plan` chooses the samples' kinds and
    segments (the pairs stage passes its own)."""
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
    envelope = {name: batch[name].to_pylist() for name in (stream.REJECT_STAGE, stream.REJECT_REASON, stream.REJECT_DETAIL)}
    for index, problem in enumerate(problems):
        if problem and pending[index]:
            envelope[stream.REJECT_STAGE][index], envelope[stream.REJECT_REASON][index] = NAME, str(problem[0])
            envelope[stream.REJECT_DETAIL][index] = problem[1]
    rows = np.flatnonzero(pending & np.array([problem is None for problem in problems], bool))
    utterances = Utterances(
        *(batch[name].to_pylist() for name in (utterance.ID, utterance.TEXT, utterance.LANGUAGE)),
        pc.struct_field(pc.list_flatten(words), aligned.WORD_TEXT).to_pylist(), word_bounds,
        pc.list_flatten(units).combine_chunks(), unit_bounds,
        spans.word_cuts(word_sizes, word_starts, word_ends, unit_sizes, unit_starts, unit_ends, config.tolerance_ms))
    chosen = plan(utterances, rows, config)
    documents, speech_words, unit_counts = render(utterances, rows, chosen)
    built = np.zeros(batch.num_rows, bool)
    built[rows] = True
    at = np.cumsum(built) - 1  # a built row's place among the built rows
    placed = pa.array(at, mask=~built)
    columns = {sample.ROW_KEY: batch[utterance.ID], sample.ROW_SOURCE: batch[utterance.SOURCE],
               stream.PARTITION: batch[stream.PARTITION], stream.PARTITION_TOTAL: batch[stream.PARTITION_TOTAL]}
    columns |= {name: pc.if_else(built, batch[source], pa.scalar(None, pa.string()))
                for name, source in ((sample.ROW_LANGUAGE, utterance.LANGUAGE), (sample.ROW_TOKENIZER, tokenized.TOKENIZER))}
    columns |= {name: pa.array(values).take(placed) for name, values in (
        (sample.ROW_KIND, chosen.kinds), (sample.ROW_JSON, documents), (sample.ROW_WORDS, word_sizes[rows]),
        (sample.ROW_SPEECH_WORDS, speech_words), (sample.ROW_UNITS, unit_counts))}
    return pa.table(columns | envelope, schema=OUTPUT_SCHEMA).select(OUTPUT_SCHEMA.names)


def _sizes(lists: pa.ChunkedArray) -> np.ndarray:
    """Each row's list length (0 for null)."""
    return pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _flat(values) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False).astype(np.int64)


def _ratio(stats: dict) -> dict:
    words = stats.get("interleaved_words", 0)
    return {"speech_text_ratio": round(stats.get("interleaved_speech_words", 0) / words, 4) if words else None}


def config_digest(config) -> str:
    return hashlib.sha256(repr(sorted(vars(config).items())).encode()).hexdigest()[:16]


def partition_samples(folder: Path, partition: str) -> pa.Table:
    """One committed partition's sample rows, in key order."""
    table = read_rows(folder / partition) if (folder / partition).exists() else pa.table({})
    return table.sort_by(sample.ROW_KEY) if table.num_rows else table


def sample_vocabulary(table: pa.Table) -> dict:
    """The unit tokenizer the rows name, and its vocabulary size; rows of two tokenizers are refused."""
    if not table.num_rows:
        return {}
    tokenizers = pc.unique(table[sample.ROW_TOKENIZER]).to_pylist()
    if len(tokenizers) != 1:
        raise ValueError(f"samples of {len(tokenizers)} tokenizers ({', '.join(sorted(tokenizers)[:3])}): "
                         "their unit ids mean different things; tokenize all partitions with one codebook")
    return {sample.INDEX_TOKENIZER: tokenizers[0], sample.INDEX_UNIT_VOCAB: tokenized.unit_vocabulary(tokenizers[0])}


def shard_members(table: pa.Table):
    """(key, members, stats) per sample row, in the table's order."""
    columns = [table[name].to_pylist() for name in (sample.ROW_KEY, sample.ROW_JSON, sample.ROW_KIND,
                                                     sample.ROW_WORDS, sample.ROW_SPEECH_WORDS, sample.ROW_UNITS)]
    for key, document, kind, words, speech_words, units in zip(*columns):
        stats = {f"{kind}_samples": 1, "words": words, "units": units}
        if kind == "interleaved":
            tenth = min(int(10 * speech_words / words), 9) if words else 0
            stats |= {"interleaved_words": words, "interleaved_speech_words": speech_words,
                      "speech_share_histogram": {f"{tenth / 10:.1f}-{(tenth + 1) / 10:.1f}": 1}}
        yield key, {"json": document.encode()}, stats


def kept_samples(folder: Path, partition: str, keep=None) -> pa.Table:
    """One committed partition's sample rows that `keep(table)` selects (all without it), in key order."""
    table = partition_samples(folder, partition)
    return table.filter(keep(table)) if keep is not None and table.num_rows else table


def write_partition_shards(folder: Path, target: Path, shard_bytes: int, item: tuple[str, dict], keep=None,
                           describe=sample_vocabulary) -> dict:
    """On a worker: one partition's sample rows (those `keep(table)` selects) into `target`."""
    partition, stamp = item
    table = kept_samples(folder, partition, keep)
    return shards.write_partition(target, partition, shard_members(table), shard_bytes, stamp, describe(table), _ratio,
                                  max_samples=stamp.get(SAMPLES_PER_SHARD))


SAMPLES_PER_SHARD = "samples_per_shard"  # in a partition's stamp, when min_shards caps the shards


def _kept_count(folder: Path, keep, partition: str) -> int:
    return kept_samples(folder, partition, keep).num_rows


def publish_samples(folder: Path, target: Path, shard_bytes: int, extra_index: dict, parallel, keep=None,
                    describe=sample_vocabulary, largest: tuple[str, ...] = (), min_shards: int = 1,
                    title: str = "sylm-data samples") -> dict:
    """The committed partitions of a sample-row stage into the shard folder `target`, with its
    dataset card (see `pipeline.shards.publish`): only partitions committed since the last
    publish are written, unless the cap `min_shards` sets on samples per shard has moved."""
    markers = OutputLayout(folder.parent).markers(folder.name)
    stamps = {partition: {"run": marker["run_id"], "config": extra_index["config_hash"]} for partition, marker in markers.items()}
    if not any(marker["rows_out"] for marker in markers.values()):
        raise ValueError(f"{folder} holds no samples: nothing to shard")
    if min_shards > 1:  # the folder's own sample count: a `keep` filter is counted on the workers
        counts = ([marker["rows_out"] for marker in markers.values()] if keep is None
                  else parallel(functools.partial(_kept_count, folder, keep), sorted(markers)))
        cap = shards.samples_per_shard(sum(counts), min_shards)
        stamps = {partition: stamp | {SAMPLES_PER_SHARD: cap} for partition, stamp in stamps.items()}
    write = functools.partial(write_partition_shards, folder, target, shard_bytes, keep=keep, describe=describe)
    return shards.publish(target, stamps, write, parallel, extra_index | {sample.INDEX_VERSION: sample.VERSION},
                          derive=_ratio, largest=largest, card=functools.partial(sample.dataset_card, title=title))


def write_shards(config: InterleaveConfig, folder: Path, parallel) -> dict:
    """The committed sample rows into DIR/shards, partition by partition (see `publish_samples`)."""
    index = publish_samples(folder, folder.parent / "shards", config.shard_bytes, {"config_hash": config_digest(config)}, parallel,
                            min_shards=config.min_shards, title="sylm-data interleaved speech–text samples")
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
)
