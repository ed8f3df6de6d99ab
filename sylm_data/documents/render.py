"""Samples as JSON text: a plan's segments of some utterances rendered byte for byte as
`COMPACT_JSON` writes the sample contract (`schemas/sample.py`), by a compiled writer over Arrow's
flat buffers, never Python objects per unit or segment."""

import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.compiled import compiled
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
    each one's speech words and units."""
    segments, speech = plan.segments, plan.speech
    document_of = np.searchsorted(rows, segments.rows)
    spoken = np.flatnonzero(speech)
    lengths = (segments.end_unit - segments.first_unit)[spoken]
    starts = (utterances.unit_bounds[segments.rows] + segments.first_unit)[spoken]
    texts = segment_texts(utterances, segments.take(np.flatnonzero(~speech)))
    one_each = np.ones(len(rows), np.int64)
    documents = documents_json(SpeechUnits(utterances.unit_ids, starts, lengths, np.ones(len(spoken), np.int64)), texts, speech,
                               np.bincount(document_of, minlength=len(rows)), plan.kinds,
                               utterances.languages.take(rows), utterances.ids.take(rows), one_each)
    speech_words = np.bincount(document_of[spoken], weights=segments.words[spoken], minlength=len(rows))
    units = np.bincount(document_of[spoken], weights=lengths, minlength=len(rows))
    return documents, speech_words.astype(np.int64), units.astype(np.int64)


class SpeechUnits(NamedTuple):
    """The units of speech segments, in order: each segment joins its next `ranges_per_segment`
    ranges of the flat `unit_ids` (range r: starts[r], lengths[r] units)."""
    unit_ids: pa.Array | np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    ranges_per_segment: np.ndarray


class TextPieces(NamedTuple):
    """The texts of text segments, in order: each segment joins its next `pieces_per_segment`
    pieces with `joiners[joiner_of[segment]]`; piece p is transcripts[rows[p]][starts[p]:ends[p]]
    stripped of whitespace (character positions; sliced and stripped as Python's str does)."""
    transcripts: pa.Array
    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    pieces_per_segment: np.ndarray
    joiner_of: np.ndarray
    joiners: list[str]


def documents_json(units: SpeechUnits, texts: TextPieces, speech: np.ndarray, per_document: np.ndarray, kinds: list[str],
                   languages: pa.Array, ids: pa.Array, ids_per_document: np.ndarray) -> pa.Array:
    """Samples' JSON, as COMPACT_JSON writes them, from their segments in order: segment i is
    speech where `speech[i]` (its units the next of `units`), else text (the next of `texts`);
    document d holds the next `per_document[d]` segments and the next `ids_per_document[d]` source
    ids (`ids`), the first of which is its `source_id`. Written by one compiled pass into a
    buffer of a guessed size, grown where a document does not fit."""
    unit_ids = units.unit_ids.to_numpy(zero_copy_only=False) if isinstance(units.unit_ids, pa.Array) else units.unit_ids
    transcripts = pc.fill_null(texts.transcripts, "")
    transcript_buffers = string_buffers(transcripts)
    language_buffers, id_buffers = string_buffers(languages), string_buffers(ids)
    as_int = lambda values: np.asarray(values, np.int64)  # noqa: E731
    # a guess, right where texts need no escapes and units have at most 5 digits; the writer grows it
    data = np.empty(len(transcript_buffers[1]) + 6 * int(np.sum(units.lengths)) + _FIXED * (len(speech) + len(per_document))
                    + len(language_buffers[1]) + 2 * len(id_buffers[1]), np.uint8)
    bounds, state = np.zeros(len(per_document) + 1, np.int64), np.zeros(7, np.int64)
    arguments = (np.asarray(speech, np.bool_), as_int(per_document), unit_ids,
                 *map(as_int, (units.starts, units.lengths, units.ranges_per_segment)), *transcript_buffers,
                 pc.string_is_ascii(transcripts).to_numpy(zero_copy_only=False),
                 *map(as_int, (texts.rows, texts.starts, texts.ends, texts.pieces_per_segment, texts.joiner_of)),
                 *string_buffers(pa.array(texts.joiners, pa.string())), *string_buffers(pa.array(kinds, pa.string())),
                 *language_buffers, *id_buffers, as_int(ids_per_document))
    while not _write_documents(data, bounds, state, *arguments):
        written = bounds[state[0]]  # the documents before the one that did not fit
        grown = np.empty(2 * len(data) + _FIXED, np.uint8)
        grown[:written] = data[:written]
        data = grown
    return pa.LargeStringArray.from_buffers(len(per_document), pa.py_buffer(bounds), pa.py_buffer(data)).cast(pa.string())


def _template(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8)


# the fixed bytes of a document, in the order COMPACT_JSON writes the sample contract's fields
_OPEN, _SPEECH, _SPEECH_END, _TEXT, _TEXT_END = (_template(part) for part in (
    '{"segments":[', '{"modality":"speech","text":null,"units":[', "]}", '{"modality":"text","text":', ',"units":null}'))
_KIND, _LANGUAGE, _SOURCE_ID, _SOURCE_IDS, _CLOSE, _COMMA = (_template(part) for part in (
    '],"kind":"', '","language":', ',"source_id":', ',"source_ids":[', '],"synthetic":null}', ","))
# json's escapes: a letter after a backslash for these bytes, \u00XX (lowercase hex) for the other
# control bytes, 0 where a byte is written as it is
_ESCAPE = np.zeros(256, np.uint8)
_ESCAPE[:0x20] = ord("u")
_ESCAPE[np.frombuffer(b'\b\t\n\f\r"\\', np.uint8)] = np.frombuffer(b'btnfr"\\', np.uint8)
_HEX = _template("0123456789abcdef")
# the code points str.strip() (and Arrow's utf8_trim_whitespace) strip; none is above U+3000
_SPACE = np.array([chr(code).isspace() for code in range(0x3001)])


@compiled
def _put(out, at, data, start, end):
    """`data[start:end]` at `at`; where it ends."""
    for index in range(end - start):  # a loop: slicing costs more than the few bytes copied
        out[at + index] = data[start + index]
    return at + end - start


@compiled
def _put_all(out, at, data):
    return _put(out, at, data, 0, len(data))


@compiled
def _put_escaped(out, at, data, start, end):
    """UTF-8 `data[start:end]` escaped as `quoted` escapes a string's characters (at most 6 bytes each)."""
    for index in range(start, end):
        byte = data[index]
        letter = _ESCAPE[byte]
        if letter == 0:
            out[at] = byte
            at += 1
        elif letter != 117 or byte >= 0x20:  # a short escape: backslash and one letter
            out[at], out[at + 1] = 92, letter
            at += 2
        else:
            out[at : at + 6] = np.array([92, 117, 48, 48, _HEX[byte >> 4], _HEX[byte & 15]], np.uint8)
            at += 6
    return at


@compiled
def _put_quoted(out, at, data, start, end):
    """UTF-8 `data[start:end]` as a JSON string literal, as `quoted` writes it."""
    out[at] = 34
    at = _put_escaped(out, at + 1, data, start, end)
    out[at] = 34
    return at + 1


@compiled
def _char_byte(data, start, end, ascii, chars):
    """Where character `chars` of the UTF-8 text data[start:end] starts (its end if it has fewer)."""
    if ascii:
        return min(start + chars, end)
    for index in range(start, end):
        if (data[index] & 0xC0) != 0x80:  # a character starts here
            if chars == 0:
                return index
            chars -= 1
    return end


@compiled
def _char_size(lead):
    """The bytes of the UTF-8 character that starts with byte `lead`."""
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


@compiled
def _is_space(data, index, end):
    """Whether the UTF-8 character that starts at `index` (before `end`) is whitespace."""
    byte = data[index]
    if byte < 0x80:
        return _SPACE[byte]
    size = _char_size(byte)
    if index + size > end:
        return False
    code = byte & (0x1F if size == 2 else 0x0F if size == 3 else 0x07)
    for follower in range(index + 1, index + size):
        code = (code << 6) | (data[follower] & 0x3F)
    return code < len(_SPACE) and _SPACE[code]


@compiled
def _stripped(data, start, end):
    """The bytes of data[start:end] (a UTF-8 text) without whitespace at either end."""
    while start < end and _is_space(data, start, end):
        start += _char_size(data[start])
    while start < end:
        last = end - 1
        while last > start and (data[last] & 0xC0) == 0x80:
            last -= 1
        if not _is_space(data, last, end):
            break
        end = last
    return start, end


# "00" to "99": a number is written two digits at a time
_DIGIT_PAIRS = _template("".join(f"{pair:02d}" for pair in range(100)))


@compiled
def _put_number(out, at, value):
    """An int64 in decimal: 20 bytes at most."""
    if value < 0:
        out[at] = 45
        at, value = at + 1, -value
    digits, rest = 1, value
    while rest >= 10:
        digits, rest = digits + 1, rest // 10
    end = at + digits
    while value >= 100:
        pair = 2 * (value % 100)
        out[end - 1], out[end - 2] = _DIGIT_PAIRS[pair + 1], _DIGIT_PAIRS[pair]
        end, value = end - 2, value // 100
    if value >= 10:
        out[end - 1], out[end - 2] = _DIGIT_PAIRS[2 * value + 1], _DIGIT_PAIRS[2 * value]
    else:
        out[end - 1] = 48 + value
    return at + digits


# the most bytes of fixed parts a document writes per segment, and per document besides its segments
# (a comma and a speech segment's opening and end: 45; the opening, the tail and the quotes of
# language and source_id: 87)
_FIXED = 96


@compiled
def _document_bound(document, segment, spoken, text, unit_range, piece, first_id, speech, per_document, range_lengths,
                    ranges_per_segment, transcript_bounds, transcript_bytes, ascii, piece_rows, piece_starts, piece_ends,
                    pieces_per_segment, joiner_of, joiner_bounds, kind_bounds, language_bounds, id_bounds, ids_per_document):
    """The most bytes document `document` can take: every string it quotes, piece of text and
    joiner 6 times over (escaped), a unit's 20 digits and a comma."""
    bound = _FIXED + kind_bounds[document + 1] - kind_bounds[document] + 6 * (language_bounds[document + 1] - language_bounds[document])
    last_id = first_id + ids_per_document[document]
    bound += 6 * (id_bounds[first_id + 1] - id_bounds[first_id] + id_bounds[last_id] - id_bounds[first_id]) + 3 * ids_per_document[document]
    for _ in range(per_document[document]):
        bound += _FIXED
        if speech[segment]:
            for _ in range(ranges_per_segment[spoken]):
                bound += 21 * range_lengths[unit_range]
                unit_range += 1
            spoken += 1
        else:
            joiner = joiner_of[text]
            for _ in range(pieces_per_segment[text]):
                row = piece_rows[piece]
                first, end = transcript_bounds[row], transcript_bounds[row + 1]
                start = _char_byte(transcript_bytes, first, end, ascii[row], piece_starts[piece])
                stop = _char_byte(transcript_bytes, first, end, ascii[row], piece_ends[piece])
                bound += 6 * (max(stop - start, 0) + joiner_bounds[joiner + 1] - joiner_bounds[joiner])
                piece += 1
            text += 1
        segment += 1
    return bound


@compiled
def _write_documents(out, bounds, state, speech, per_document, unit_ids, range_starts, range_lengths, ranges_per_segment,
                     transcript_bounds, transcript_bytes, ascii, piece_rows, piece_starts, piece_ends, pieces_per_segment,
                     joiner_of, joiner_bounds, joiner_bytes, kind_bounds, kind_bytes, language_bounds, language_bytes,
                     id_bounds, id_bytes, ids_per_document):
    """Writes the documents into `out` from the one `state` names (its document, segment, speech
    and text segment, unit range, text piece and id; all 0 at first), each one's start into
    `bounds`. Whether all fit: where one may not (`_document_bound`), nothing of it is written
    and `state` names it, for a call with a larger `out` to go on from."""
    document, segment, spoken, text, unit_range, piece, first_id = state
    at = bounds[document]
    while document < len(per_document):
        limit = at + _document_bound(document, segment, spoken, text, unit_range, piece, first_id, speech, per_document,
                                     range_lengths, ranges_per_segment, transcript_bounds, transcript_bytes, ascii, piece_rows,
                                     piece_starts, piece_ends, pieces_per_segment, joiner_of, joiner_bounds, kind_bounds,
                                     language_bounds, id_bounds, ids_per_document)
        if limit > len(out):
            state[0], state[1], state[2], state[3], state[4], state[5], state[6] = (
                document, segment, spoken, text, unit_range, piece, first_id)
            bounds[document] = at
            return False
        bounds[document] = at
        at = _put_all(out, at, _OPEN)
        for place in range(per_document[document]):
            if place:
                at = _put_all(out, at, _COMMA)
            if speech[segment]:
                at = _put_all(out, at, _SPEECH)
                written = 0
                for _ in range(ranges_per_segment[spoken]):
                    for unit in range(range_starts[unit_range], range_starts[unit_range] + range_lengths[unit_range]):
                        if written:
                            at = _put_all(out, at, _COMMA)
                        at = _put_number(out, at, unit_ids[unit])
                        written += 1
                    unit_range += 1
                spoken += 1
                at = _put_all(out, at, _SPEECH_END)
            else:
                at = _put_all(out, at, _TEXT)
                out[at] = 34
                at += 1
                joiner = joiner_of[text]
                for part in range(pieces_per_segment[text]):
                    if part:
                        at = _put_escaped(out, at, joiner_bytes, joiner_bounds[joiner], joiner_bounds[joiner + 1])
                    row = piece_rows[piece]
                    first, end = transcript_bounds[row], transcript_bounds[row + 1]
                    start = _char_byte(transcript_bytes, first, end, ascii[row], piece_starts[piece])
                    start, stop = _stripped(transcript_bytes, start, _char_byte(transcript_bytes, first, end, ascii[row], piece_ends[piece]))
                    at = _put_escaped(out, at, transcript_bytes, start, stop)
                    piece += 1
                out[at] = 34
                at = _put_all(out, at + 1, _TEXT_END)
                text += 1
            segment += 1
        at = _put_all(out, at, _KIND)
        at = _put(out, at, kind_bytes, kind_bounds[document], kind_bounds[document + 1])
        at = _put_all(out, at, _LANGUAGE)
        at = _put_quoted(out, at, language_bytes, language_bounds[document], language_bounds[document + 1])
        at = _put_all(out, at, _SOURCE_ID)
        at = _put_quoted(out, at, id_bytes, id_bounds[first_id], id_bounds[first_id + 1])
        at = _put_all(out, at, _SOURCE_IDS)
        for held in range(first_id, first_id + ids_per_document[document]):
            if held > first_id:
                at = _put_all(out, at, _COMMA)
            at = _put_quoted(out, at, id_bytes, id_bounds[held], id_bounds[held + 1])
        first_id += ids_per_document[document]
        at = _put_all(out, at, _CLOSE)
        if at > limit:
            raise AssertionError("a document took more bytes than its bound")
        document += 1
    bounds[document] = at
    return True


quoted = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept (as COMPACT_JSON writes it)


_INT32 = np.iinfo(np.int32)


def list_offsets(sizes: np.ndarray) -> pa.Array:
    """The offsets of an Arrow list array whose lists hold `sizes` items each."""
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if offsets[-1] > _INT32.max:
        raise OverflowError(f"{offsets[-1]} items do not fit a list array's int32 offsets")
    return pa.array(offsets.astype(np.int32))


def range_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions of the ranges start..start + length - 1, one range after another."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())


def int_lists(values: pa.Array | np.ndarray, sizes: np.ndarray) -> pa.ListArray:
    """`values` grouped by `sizes`, each group one list of int32."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and len(values):
        if values.min() < _INT32.min or values.max() > _INT32.max:
            raise OverflowError(f"values {values.min()}..{values.max()} do not fit int32 lists")
        values = pa.array(values.astype(np.int32, copy=False))  # an unchecked cast takes a fifth of Arrow's checked one
    elif not (isinstance(values, pa.Array) and values.type == pa.int32()):
        values = pc.cast(values, pa.int32())
    return pa.ListArray.from_arrays(list_offsets(sizes), values)


def segment_texts(utterances: Utterances, pieces: spans.Pieces) -> TextPieces:
    """Each text piece as the transcript writes it (its punctuation kept), from its first word."""
    places = utterances.offset_bounds[pieces.rows]
    starts, ends = utterances.offset_table[places + pieces.first_word], utterances.offset_table[places + pieces.end_word]
    return TextPieces(utterances.text_array, pieces.rows, starts, ends, np.ones(len(starts), np.int64),
                      np.zeros(len(starts), np.int64), [""])


def build_samples(batch: pa.Table, config, plan, stage: str) -> pa.Table:
    """One sample row per usable utterance: `plan(utterances, rows, config)` chooses the samples'
    kinds and segments, rendered as JSON over the whole batch."""
    read = read_batch(batch, config.tolerance_ms, config.granularity, stage)
    chosen = plan(read.utterances, read.rows, config)
    documents, speech_words, unit_counts = render(read.utterances, read.rows, chosen)
    return sample_rows(read, {sample.ROW_KIND: chosen.kinds, sample.ROW_JSON: documents,
                              sample.ROW_SPEECH_WORDS: speech_words, sample.ROW_UNITS: unit_counts})
