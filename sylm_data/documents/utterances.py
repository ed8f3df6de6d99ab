"""A batch of `tokenized` rows read for sample building: the checks that reject an utterance, its
words and units read flat from Arrow, and its chunks.

`read_batch` takes the batch apart column-wise (lists are read flat, the audio column is never
copied) and marks the utterances no sample can be made of; `sample_rows` gives back the stage's
rows, built ones and rejected ones, in the batch's order.
"""

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data import languages
from sylm_data.documents import spans
from sylm_data.schemas import aligned, sample, stream, tokenized, utterance
from sylm_data.schemas.reject import Reason


@dataclass
class Utterances:
    """A batch's utterances read flat from Arrow: list columns as one flat array plus bounds
    (utterance i's words are word_array[word_bounds[i]:word_bounds[i + 1]]). `cuts`: where they
    may be cut at the batch's granularity. `offset_table`: per utterance, where each of its words
    starts in its transcript, then the transcript's length (utterance i's are
    offset_table[offset_bounds[i]:offset_bounds[i + 1]])."""
    ids: pa.Array
    text_array: pa.Array
    languages: pa.Array
    word_array: pa.Array
    word_bounds: np.ndarray
    unit_ids: pa.Array
    unit_bounds: np.ndarray
    cuts: spans.Cuts
    offset_table: np.ndarray

    @property
    def word_sizes(self) -> np.ndarray:
        return np.diff(self.word_bounds)

    @property
    def unit_sizes(self) -> np.ndarray:
        return np.diff(self.unit_bounds)

    @functools.cached_property
    def offset_bounds(self) -> np.ndarray:
        return self.word_bounds + np.arange(len(self.word_bounds))


class Plan(NamedTuple):
    """What the samples of some utterances (ascending rows) hold: each one's kind, and its
    segments in order (word and unit ranges), each speech or text."""
    kinds: list[str]
    segments: spans.Pieces
    speech: np.ndarray


def unusable(word_sizes, first_word_starts, last_word_ends, unit_sizes, first_unit_starts,
             last_unit_ends) -> dict[int, tuple[str, str]]:
    """The utterances no sample can be made of, by index: (reason, detail) for no words, no units,
    or words and units that do not overlap in time. Firsts and lasts are given for non-empty ones only."""
    word_sizes, unit_sizes = np.asarray(word_sizes), np.asarray(unit_sizes)
    both = (word_sizes > 0) & (unit_sizes > 0)
    first_word, last_word, first_unit, last_unit = (np.zeros(len(word_sizes), np.int64) for _ in range(4))
    first_word[word_sizes > 0], last_word[word_sizes > 0] = first_word_starts, last_word_ends
    first_unit[unit_sizes > 0], last_unit[unit_sizes > 0] = first_unit_starts, last_unit_ends
    disjoint = both & ((last_word <= first_unit) | (last_unit <= first_word))
    problems = {}
    for index in np.flatnonzero(~both | disjoint).tolist():
        if not word_sizes[index]:
            problems[index] = (Reason.NO_WORDS, "no aligned words")
        elif not unit_sizes[index]:
            problems[index] = (Reason.NO_UNITS, "no units")
        else:
            problems[index] = (Reason.SPANS_DISJOINT, f"words {first_word[index]}-{last_word[index]} ms, "
                                                      f"units {first_unit[index]}-{last_unit[index]} ms")
    return problems


def utterance_chunks(utterances: Utterances, rows: np.ndarray) -> spans.Pieces:
    """The chunks of utterances `rows`: cut at every cut their granularity allows."""
    return spans.chunks(utterances.cuts, utterances.word_sizes, utterances.unit_sizes, rows)


OUTPUT_SCHEMA = stream.in_flight(sample.ROW_SCHEMA)


class Batch(NamedTuple):
    """A tokenized batch read for building: its utterances, the rows still to build (ascending),
    each row's word count, and the reject envelope (rows found unusable marked)."""
    table: pa.Table
    utterances: Utterances
    rows: np.ndarray
    word_sizes: np.ndarray
    envelope: dict[str, list | pa.ChunkedArray]


def read_batch(batch: pa.Table, tolerance_ms: int, granularity: str, stage: str) -> Batch:
    """Column-wise: lists are read flat from Arrow (the audio column is never copied); the checks
    and the cuts run over the whole batch: at every gap between words where a unit boundary falls
    (word granularity), or only at the usable utterances' sentence ends (sentence granularity: the
    other gaps are never looked at). Unusable utterances are rejected by `stage`."""
    pending = pc.is_null(batch[stream.REJECT_REASON]).to_numpy(zero_copy_only=False)
    unit_lengths = [_sizes(batch[name]) for name in (tokenized.UNITS, tokenized.UNIT_START_MS, tokenized.UNIT_END_MS)]
    mismatched = pending & ((unit_lengths[0] != unit_lengths[1]) | (unit_lengths[0] != unit_lengths[2]))
    # only rows still to build contribute values: the flat arrays then line up with the sizes
    words = _kept(batch[aligned.WORDS], pending)
    units, unit_starts, unit_ends = (_kept(batch[name], pending & ~mismatched)
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
    rejected = sorted(index for index in problems if pending[index])
    envelope = {name: batch[name] for name in (stream.REJECT_STAGE, stream.REJECT_REASON, stream.REJECT_DETAIL)}
    if rejected:
        envelope = {name: column.to_pylist() for name, column in envelope.items()}
        for index in rejected:
            envelope[stream.REJECT_STAGE][index], envelope[stream.REJECT_REASON][index] = stage, str(problems[index][0])
            envelope[stream.REJECT_DETAIL][index] = problems[index][1]
    usable = pending.copy()
    usable[rejected] = False
    rows = np.flatnonzero(usable)
    texts, word_texts = batch[utterance.TEXT].combine_chunks(), pc.struct_field(pc.list_flatten(words), aligned.WORD_TEXT)
    offset_table = languages.word_offset_table(texts, word_texts, word_bounds)
    sentence_ends = None
    if granularity == "sentence":
        word_offsets = np.delete(offset_table, word_bounds[1:] + np.arange(len(word_bounds) - 1))  # each text's length left out
        sentence_ends = languages.punctuated_ends_batch(texts, word_texts, word_bounds, word_offsets, spans.SENTENCE_MARKS, rows)
    cuts = spans.word_cuts(word_sizes, word_starts, word_ends, unit_sizes, unit_starts, unit_ends, tolerance_ms, at=sentence_ends)
    utterances = Utterances(batch[utterance.ID].combine_chunks(), texts, batch[utterance.LANGUAGE].combine_chunks(), word_texts,
                            word_bounds, pc.list_flatten(units).combine_chunks(), unit_bounds, cuts, offset_table)
    return Batch(batch, utterances, rows, word_sizes, envelope)


def sample_rows(read: Batch, values: dict[str, list | pa.Array | np.ndarray]) -> pa.Table:
    """The in-flight sample rows of a read batch: `values` gives each sample column for the built
    rows (in `read.rows` order); rejected rows keep their id, source and reject envelope."""
    batch = read.table
    built = np.zeros(batch.num_rows, bool)
    built[read.rows] = True
    placed = pa.array(np.cumsum(built) - 1, mask=~built)  # a built row's place among the built rows
    columns = {sample.ROW_KEY: batch[utterance.ID], sample.ROW_SOURCE: batch[utterance.SOURCE],
               stream.PARTITION: batch[stream.PARTITION], stream.PARTITION_TOTAL: batch[stream.PARTITION_TOTAL]}
    values = {sample.ROW_WORDS: read.word_sizes[read.rows]} | values
    values = {name: _typed(column, OUTPUT_SCHEMA.field(name).type) for name, column in values.items()}
    if built.all():  # nothing to place
        columns |= {sample.ROW_LANGUAGE: batch[utterance.LANGUAGE], sample.ROW_TOKENIZER: batch[tokenized.TOKENIZER]} | values
    else:
        columns |= {name: pc.if_else(built, batch[source], pa.scalar(None, pa.string()))
                    for name, source in ((sample.ROW_LANGUAGE, utterance.LANGUAGE), (sample.ROW_TOKENIZER, tokenized.TOKENIZER))}
        columns |= {name: column.take(placed) for name, column in values.items()}
    columns |= {name: pa.nulls(batch.num_rows, OUTPUT_SCHEMA.field(name).type)
                for name in sample.ROW_SCHEMA.names if name not in columns}
    return pa.table(columns | read.envelope, schema=OUTPUT_SCHEMA).select(OUTPUT_SCHEMA.names)


def _typed(values, kind: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        # Arrow's type equality ignores a list's field name: nested columns are always cast to the contract's
        return values if values.type == kind and not pa.types.is_nested(kind) else values.cast(kind)
    return pa.array(values, kind)


def _kept(column: pa.ChunkedArray, keep: np.ndarray) -> pa.ChunkedArray:
    """The rows `keep` marks; the column itself when it marks all (a filter copies every list)."""
    return column if keep.all() else column.filter(pa.array(keep))


def _sizes(lists: pa.ChunkedArray) -> np.ndarray:
    """Each row's list length (0 for null)."""
    return pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _flat(values) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


