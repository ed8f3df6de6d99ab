"""Samples as JSON text: a plan's segments of some utterances rendered byte for byte as
`COMPACT_JSON` writes the sample contract (`schemas/sample.py`), the units through Arrow's string
kernels, never Python ints."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.documents import spans
from sylm_data.documents.utterances import Plan, Utterances, read_batch, sample_rows
from sylm_data.languages import string_buffers
from sylm_data.schemas import sample

COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # the byte layout render writes
# utterances per call of a sample stage's transform (`pipeline.stage.in_slices`): on 2 cores, 100,000
# in one call took 2-3x as long as in slices of 4,096 (slices of 1,024 no less), and 7x the memory
ROWS_PER_CALL = 4096


def render(utterances: Utterances, rows: np.ndarray, plan: Plan) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The JSON documents of utterances `rows` (byte for byte what COMPACT_JSON writes of them), and
    each one's speech words and units. Units go through Arrow's string kernels, never Python ints."""
    segments, speech = plan.segments, plan.speech
    document_of = np.searchsorted(rows, segments.rows)
    spoken = np.flatnonzero(speech)
    lengths = (segments.end_unit - segments.first_unit)[spoken]
    starts = (utterances.unit_bounds[segments.rows] + segments.first_unit)[spoken]
    units_text = comma_joined(utterances.unit_ids.take(range_positions(starts, lengths)), lengths)
    texts = segment_texts(utterances, segments.take(np.flatnonzero(~speech)))
    source_ids = quoted_strings(pa.array(utterances.ids, pa.string()).take(rows))
    documents = documents_json(units_text, texts, speech, np.bincount(document_of, minlength=len(rows)), plan.kinds,
                               [utterances.languages[row] for row in rows.tolist()], source_ids, source_ids)
    speech_words = np.bincount(document_of[spoken], weights=segments.words[spoken], minlength=len(rows))
    units = np.bincount(document_of[spoken], weights=lengths, minlength=len(rows))
    return documents, speech_words.astype(np.int64), units.astype(np.int64)


def documents_json(units_text: pa.Array, texts: pa.Array, speech: np.ndarray, per_document: np.ndarray, kinds: list[str],
                   languages: list[str], source_ids: pa.Array, held: pa.Array) -> pa.Array:
    """Samples' JSON, as COMPACT_JSON writes them, from their segments in order: segment i is
    speech where `speech[i]`, its units the next of `units_text` (comma-joined), else text, the next
    of `texts`; document d holds the next `per_document[d]` segments. `source_ids`: each one's
    first utterance id, `held`: all of its ids, comma-joined; both as JSON string literals."""
    speech_json = pc.binary_join_element_wise('{"modality":"speech","text":null,"units":[', units_text, "]}", "")
    text_json = pc.binary_join_element_wise('{"modality":"text","text":', quoted_strings(texts),
                                            ',"units":null}', "")
    order = np.empty(len(speech), np.int64)
    spoken = int(np.count_nonzero(speech))
    order[speech], order[~speech] = np.arange(spoken), spoken + np.arange(len(texts))
    segment_lists = pa.ListArray.from_arrays(list_offsets(per_document),
                                             pa.concat_arrays([speech_json, text_json.cast(speech_json.type)]).take(order))
    return pc.binary_join_element_wise(
        '{"segments":[', pc.binary_join(segment_lists, ","), '],"kind":"', pa.array(kinds, pa.string()),
        '","language":', quoted_strings(pa.array(languages, pa.string())),
        ',"source_id":', source_ids, ',"source_ids":[', held, '],"synthetic":null}', "")


quoted = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept (as COMPACT_JSON writes it)
_ESCAPED = r'[\x00-\x1f"\\]'  # what `quoted` escapes; everything else it keeps as it is


def quoted_strings(strings: pa.Array) -> pa.Array:
    """Each string as `quoted` writes it: in quotes, and escaped in the rare string that needs it."""
    literals = pc.binary_join_element_wise('"', strings, '"', "")
    escaped = pc.match_substring_regex(strings, _ESCAPED)
    if not pc.any(escaped).as_py():
        return literals
    return pc.replace_with_mask(literals, escaped, pa.array([quoted(item) for item in strings.filter(escaped).to_pylist()],
                                                             pa.string()))


def list_offsets(sizes: np.ndarray) -> pa.Array:
    """The offsets of an Arrow list array whose lists hold `sizes` items each."""
    return pa.array(np.concatenate([[0], np.cumsum(sizes)]), pa.int32())


def range_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions of the ranges start..start + length - 1, one range after another."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())


def text_slices(texts: pa.Array, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """`texts[rows[i]][starts[i]:ends[i]]` for each i (character positions, as Python slices them,
    0 <= start <= end <= length), cut from the UTF-8 bytes in bulk. In an ASCII text a character is
    a byte; in any other, character k starts at the k-th byte of the text that opens a character."""
    text_bytes, data = string_buffers(texts.cast(pa.large_string()))
    rows, starts, ends = (np.asarray(values, np.int64) for values in (rows, starts, ends))
    begin, end = text_bytes[rows] + starts, text_bytes[rows] + ends
    wide = ~pc.fill_null(pc.string_is_ascii(texts), True).to_numpy(zero_copy_only=False)
    if wide.any():
        in_wide = np.repeat(wide, np.diff(text_bytes))
        opens = np.flatnonzero(in_wide & ((data[: text_bytes[-1]] & 0xC0) != 0x80))
        first_char = np.searchsorted(opens, text_bytes[:-1])
        characters = pc.fill_null(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False)
        picked = np.flatnonzero(wide[rows])
        for bounds, chars in ((begin, starts), (end, ends)):
            row, char = rows[picked], chars[picked]
            at = opens[np.minimum(first_char[row] + char, max(len(opens) - 1, 0))] if len(opens) else text_bytes[row + 1]
            bounds[picked] = np.where(char < characters[row], at, text_bytes[row + 1])
    lengths = end - begin
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    sliced = data[range_positions(begin, lengths)]
    return pa.LargeStringArray.from_buffers(len(rows), pa.py_buffer(offsets), pa.py_buffer(sliced)).cast(pa.string())


def int_lists(values: pa.Array | np.ndarray, sizes: np.ndarray) -> pa.ListArray:
    """`values` grouped by `sizes`, each group one list of int32."""
    return pa.ListArray.from_arrays(list_offsets(sizes), pc.cast(values, pa.int32()))


def comma_joined(values: pa.Array | np.ndarray, sizes: np.ndarray) -> pa.Array:
    """`values` (numbers or strings) grouped by `sizes`, each group one comma-separated string."""
    values = pa.array(values) if isinstance(values, np.ndarray) else values
    return pc.binary_join(pa.ListArray.from_arrays(list_offsets(sizes), pc.cast(values, pa.string())), ",")


def segment_texts(utterances: Utterances, pieces: spans.Pieces) -> pa.Array:
    """Each text piece as the transcript writes it (its punctuation kept), from its first word."""
    places = utterances.offset_bounds[pieces.rows]
    starts, ends = utterances.offset_table[places + pieces.first_word], utterances.offset_table[places + pieces.end_word]
    return pc.utf8_trim_whitespace(text_slices(utterances.text_array, pieces.rows, starts, ends))


def build_samples(batch: pa.Table, config, plan, stage: str) -> pa.Table:
    """One sample row per usable utterance: `plan(utterances, rows, config)` chooses the samples'
    kinds and segments, rendered as JSON vectorised over the batch."""
    read = read_batch(batch, config.tolerance_ms, stage)
    chosen = plan(read.utterances, read.rows, config)
    documents, speech_words, unit_counts = render(read.utterances, read.rows, chosen)
    return sample_rows(read, {sample.ROW_KIND: chosen.kinds, sample.ROW_JSON: documents,
                              sample.ROW_SPEECH_WORDS: speech_words, sample.ROW_UNITS: unit_counts})
