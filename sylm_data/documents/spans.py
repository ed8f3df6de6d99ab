"""Chunks and speech spans: the pure core of interleaving (shared with pairs and synthesize).

Everything here works on a batch of utterances at once, in Arrow's flat list layout: utterance i
owns the next `sizes[i]` items of a flat array. A chunk boundary may only fall where a unit
boundary meets a gap between words, within a tolerance, compared in integer milliseconds. Speech
spans are Poisson-sized runs of chunks placed at random without overlap until speech holds
`speech_ratio` of the words. Each utterance draws from its own random stream, keyed by the seed
and its id, so what it gets never depends on the batch it came in. The rules that walk an
utterance word by word or chunk by chunk (the cuts, the span choice) are plain loops compiled with
numba (`sylm_data.compiled`).
"""

import functools
import math
import sys
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from sylm_data.compiled import compiled
from sylm_data.languages import punctuated_ends, string_buffers

SENTENCE_MARKS = set(".!?…。！？")

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def stream_keys(seed: int, ids: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """Each id's random stream (uint64 keys), from the run seed and the id alone: the 8-byte
    BLAKE2b digest of "<seed>:<id>" (UTF-8), read little-endian, as hashlib computes it."""
    if sys.byteorder != "little":  # _blake2b_8 reads the message's words in the machine's byte order
        raise RuntimeError("stream keys are computed on little-endian machines only")
    ids = pa.array(ids, pa.string()) if isinstance(ids, list) else ids
    if ids.null_count:
        raise ValueError("an id is null: it keys no random stream")
    return _blake2b_8(np.frombuffer(f"{seed}:".encode(), np.uint8), *string_buffers(ids))


# BLAKE2b (RFC 7693): its initial state, the message word order of each of its 12 rounds
_BLAKE2B_IV = np.array([0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
                        0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179], np.uint64)
_BLAKE2B_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4], [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13], [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11], [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5], [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3]], np.int64)


@compiled
def _rotr(x, n):
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@compiled
def _mix(a, b, c, d, x, y):
    """BLAKE2b's G on four words of the state and two of the message."""
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@compiled
def _compress(state, m, done, last):
    """BLAKE2b's F: `state` (8 words) takes message block `m` (16 words), `done` bytes in."""
    v0, v1, v2, v3, v4, v5, v6, v7 = state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7]
    v8, v9, v10, v11 = _BLAKE2B_IV[0], _BLAKE2B_IV[1], _BLAKE2B_IV[2], _BLAKE2B_IV[3]
    v12, v13 = _BLAKE2B_IV[4] ^ np.uint64(done), _BLAKE2B_IV[5]  # the counter's high word stays 0 below 2**64 bytes
    v14 = ~_BLAKE2B_IV[6] if last else _BLAKE2B_IV[6]
    v15 = _BLAKE2B_IV[7]
    for round in range(12):
        s = _BLAKE2B_SIGMA[round]
        v0, v4, v8, v12 = _mix(v0, v4, v8, v12, m[s[0]], m[s[1]])
        v1, v5, v9, v13 = _mix(v1, v5, v9, v13, m[s[2]], m[s[3]])
        v2, v6, v10, v14 = _mix(v2, v6, v10, v14, m[s[4]], m[s[5]])
        v3, v7, v11, v15 = _mix(v3, v7, v11, v15, m[s[6]], m[s[7]])
        v0, v5, v10, v15 = _mix(v0, v5, v10, v15, m[s[8]], m[s[9]])
        v1, v6, v11, v12 = _mix(v1, v6, v11, v12, m[s[10]], m[s[11]])
        v2, v7, v8, v13 = _mix(v2, v7, v8, v13, m[s[12]], m[s[13]])
        v3, v4, v9, v14 = _mix(v3, v4, v9, v14, m[s[14]], m[s[15]])
    state[0] ^= v0 ^ v8
    state[1] ^= v1 ^ v9
    state[2] ^= v2 ^ v10
    state[3] ^= v3 ^ v11
    state[4] ^= v4 ^ v12
    state[5] ^= v5 ^ v13
    state[6] ^= v6 ^ v14
    state[7] ^= v7 ^ v15


@compiled
def _blake2b_8(prefix, bounds, data):
    """The 8-byte BLAKE2b digest (unkeyed) of prefix + each string (data[bounds[i]:bounds[i + 1]]),
    as the little-endian uint64 of its first 8 bytes. Hashing each one through hashlib took 0.5 us
    of Python a string: a tenth of utterance context's whole stage."""
    keys = np.empty(len(bounds) - 1, np.uint64)
    message, block, state = np.empty(len(prefix) + len(data), np.uint8), np.zeros(128, np.uint8), np.empty(8, np.uint64)
    words = block.view(np.uint64)  # little-endian words, as BLAKE2b reads them (on little-endian machines)
    message[: len(prefix)] = prefix
    for item in range(len(bounds) - 1):
        size = len(prefix) + bounds[item + 1] - bounds[item]
        message[len(prefix) : size] = data[bounds[item] : bounds[item + 1]]
        state[:] = _BLAKE2B_IV
        state[0] ^= np.uint64(0x01010008)  # digest length 8, no key, fanout 1, depth 1
        done = 0
        while True:  # every block but the last, then the last (zero-padded; one empty block for no bytes)
            taken = min(128, size - done)
            block[:taken] = message[done : done + taken]
            block[taken:] = 0
            done += taken
            _compress(state, words, done, done == size)
            if done == size:
                break
        keys[item] = state[0]
    return keys


def uniforms(keys: np.ndarray, draw) -> np.ndarray:
    """Draw number `draw` (an int, or one per key) of each stream, uniform in [0, 1) (`_uniform`)."""
    draws = np.ascontiguousarray(np.broadcast_to(np.asarray(draw, np.int64), np.shape(keys)))
    return _uniforms(np.asarray(keys, np.uint64), draws)


@compiled
def _uniform(key, draw):
    """Draw number `draw` of stream `key`. SplitMix64 is counter-based: draw k mixes key + (k + 1)·γ
    (wrapping, as uint64 does), so any draw is had without the ones before it."""
    z = key + np.uint64(draw + 1) * _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX[0]
    z = (z ^ (z >> np.uint64(27))) * _MIX[1]
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * 2.0**-53


@compiled
def _uniforms(keys, draws):
    drawn = np.empty(len(keys), np.float64)
    for index in range(len(keys)):
        drawn[index] = _uniform(keys[index], draws[index])
    return drawn


@functools.lru_cache(maxsize=16)
def _poisson_cdf(mean: float) -> np.ndarray:
    """Poisson(mean)'s cumulative distribution, far enough into the tail; all at 0 for no mean."""
    if mean <= 0:
        return np.ones(1)
    counts = np.arange(int(mean + 12 * math.sqrt(mean)) + 20)
    log_pmf = counts * math.log(mean) - mean - np.array([math.lgamma(count + 1) for count in counts])
    return np.cumsum(np.exp(log_pmf))


def poisson(uniform: np.ndarray, mean: float) -> np.ndarray:
    """Poisson(mean) counts from uniform floats, by inversion."""
    return np.searchsorted(_poisson_cdf(mean), uniform, side="right")


class Cuts(NamedTuple):
    """Allowed cuts, sorted by utterance then word: utterance rows[i] may be cut before word
    words[i] and unit units[i] (indices within the utterance)."""
    rows: np.ndarray
    words: np.ndarray
    units: np.ndarray


class Pieces(NamedTuple):
    """Consecutive pieces (chunks, runs) of utterances, in order: piece i of utterance rows[i] holds
    words first_word..end_word-1 and units first_unit..end_unit-1 (indices within the utterance)."""
    rows: np.ndarray
    first_word: np.ndarray
    end_word: np.ndarray
    first_unit: np.ndarray
    end_unit: np.ndarray

    @property
    def words(self) -> np.ndarray:
        return self.end_word - self.first_word

    def take(self, index: np.ndarray) -> "Pieces":
        return Pieces(*(column[index] for column in self))


def word_cuts(word_sizes, word_starts, word_ends, unit_sizes, unit_starts, unit_ends, tolerance_ms: int,
              at: tuple[np.ndarray, np.ndarray] | None = None) -> Cuts:
    """Where each utterance may be cut: before word k and unit j when unit j starts (where unit
    j - 1 ends) inside the gap between words k - 1 and k, give or take `tolerance_ms`. When several
    unit boundaries qualify, the one nearest the gap's middle wins (the earlier on a tie). `at`:
    only the gaps before these (utterance, word) places, each once, sorted by utterance then word
    (one at an utterance's edge has no gap): the others are never looked at. Unit starts ascend
    within an utterance."""
    word_bounds, unit_bounds = (np.concatenate([[0], np.cumsum(np.asarray(sizes, np.int64))]) for sizes in (word_sizes, unit_sizes))
    times = [np.asarray(values, np.int64) for values in (word_starts, word_ends, unit_starts, unit_ends)]
    if at is None:
        return Cuts(*_word_cuts(word_bounds, unit_bounds, *times, tolerance_ms))
    rows, words = (np.asarray(values, np.int64) for values in at)
    if ((rows[1:] < rows[:-1]) | ((rows[1:] == rows[:-1]) & (words[1:] <= words[:-1]))).any() or (
            len(rows) and not 0 <= rows[0] <= rows[-1] < len(word_bounds) - 1):
        raise ValueError("the places must be sorted by utterance, then word, each once, among the utterances")
    return Cuts(*_cuts_at(word_bounds, unit_bounds, *times, tolerance_ms, rows, words))


@compiled
def _word_cuts(word_bounds, unit_bounds, word_starts, word_ends, unit_starts, unit_ends, tolerance_ms):
    found_cuts = np.empty((3, len(word_starts)), np.int64)  # a cut per gap at most: its row, word, unit
    boundaries = np.empty(len(unit_starts), np.int64)  # one utterance's units that start where the one before ends
    found = 0
    for row in range(len(word_bounds) - 1):
        first_unit, count = unit_bounds[row], 0
        for unit in range(first_unit + 1, unit_bounds[row + 1]):
            if unit_ends[unit - 1] == unit_starts[unit]:
                boundaries[count] = unit
                count += 1
        for word in range(word_bounds[row] + 1, word_bounds[row + 1]):
            # doubled times, so that the gap's middle stays an integer
            middle2 = word_ends[word - 1] + word_starts[word]
            low2, high2 = 2 * (word_ends[word - 1] - tolerance_ms), 2 * (word_starts[word] + tolerance_ms)
            low, high = 0, count  # binary search: the first boundary at or after the middle
            while low < high:
                half = (low + high) // 2
                if 2 * unit_starts[boundaries[half]] < middle2:
                    low = half + 1
                else:
                    high = half
            best, best_distance = -1, 0
            for candidate in (low - 1, low):  # the boundaries either side of the middle, the earlier first
                if 0 <= candidate < count:
                    best, best_distance = _nearer(best, best_distance, boundaries[candidate], unit_starts, low2, high2, middle2)
            if best >= 0:
                found_cuts[0, found], found_cuts[1, found], found_cuts[2, found] = row, word - word_bounds[row], best - first_unit
                found += 1
    return found_cuts[0, :found], found_cuts[1, :found], found_cuts[2, :found]


@compiled
def _nearer(best, best_distance, candidate, unit_starts, low2, high2, middle2):
    """Unit boundary `candidate` in place of `best` where it starts inside the gap's window
    [low2, high2] and nearer its middle (doubled times; the one found first kept on a tie)."""
    time2 = 2 * unit_starts[candidate]
    if low2 <= time2 <= high2 and (best < 0 or abs(time2 - middle2) < best_distance):
        return candidate, abs(time2 - middle2)
    return best, best_distance


@compiled
def _cuts_at(word_bounds, unit_bounds, word_starts, word_ends, unit_starts, unit_ends, tolerance_ms, at_rows, at_words):
    """`_word_cuts` at the given gaps only. The boundaries either side of a gap's middle are found
    from a binary search over the utterance's units (their starts ascend), walking to the nearest
    boundary no further than the gap's window: the units elsewhere are never read."""
    found_cuts = np.empty((3, len(at_rows)), np.int64)
    found = 0
    for place in range(len(at_rows)):
        row, word_in_row = at_rows[place], at_words[place]
        if word_in_row <= 0 or word_in_row >= word_bounds[row + 1] - word_bounds[row]:
            continue  # at an edge: no gap
        word, first_unit, end_unit = word_bounds[row] + word_in_row, unit_bounds[row], unit_bounds[row + 1]
        middle2 = word_ends[word - 1] + word_starts[word]  # doubled times, as in _word_cuts
        low2, high2 = 2 * (word_ends[word - 1] - tolerance_ms), 2 * (word_starts[word] + tolerance_ms)
        low, high = first_unit + 1, end_unit  # the first unit starting at or after the middle
        while low < high:
            half = (low + high) // 2
            if 2 * unit_starts[half] < middle2:
                low = half + 1
            else:
                high = half
        before = low - 1  # the last boundary before it, and the first at or after it, within the window
        while before > first_unit and unit_ends[before - 1] != unit_starts[before] and 2 * unit_starts[before] >= low2:
            before -= 1
        after = low
        while after < end_unit and unit_ends[after - 1] != unit_starts[after] and 2 * unit_starts[after] <= high2:
            after += 1
        best, best_distance = -1, 0
        for candidate in (before, after):  # the earlier first
            if first_unit < candidate < end_unit and unit_ends[candidate - 1] == unit_starts[candidate]:
                best, best_distance = _nearer(best, best_distance, candidate, unit_starts, low2, high2, middle2)
        if best >= 0:
            found_cuts[0, found], found_cuts[1, found], found_cuts[2, found] = row, word_in_row, best - first_unit
            found += 1
    return found_cuts[0, :found], found_cuts[1, :found], found_cuts[2, :found]


def _positions(sizes) -> tuple[np.ndarray, np.ndarray]:
    """For flat items grouped by `sizes`: (the group of each item, its index within the group)."""
    sizes = np.asarray(sizes, np.int64)
    rows = np.repeat(np.arange(len(sizes)), sizes)
    return rows, np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)


def chunks(cuts: Cuts, word_sizes: np.ndarray, unit_sizes: np.ndarray, rows: np.ndarray) -> Pieces:
    """Utterances `rows` (ascending) cut at every one of their `cuts`. Every word and every unit
    lands in exactly one chunk, in order; edge silence units stay with the edge chunks."""
    return Pieces(*_chunks(*(np.asarray(column, np.int64) for column in (*cuts, word_sizes, unit_sizes, rows))))


def chunk_sizes(cuts: Cuts, word_sizes: np.ndarray, unit_sizes: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """`chunks`' sizes alone: each chunk's words and units (int32), and each row's chunk count."""
    return _chunk_sizes(*(np.asarray(column, np.int64) for column in (*cuts, word_sizes, unit_sizes, rows)))


@compiled
def _chunk_sizes(cut_rows, cut_words, cut_units, word_sizes, unit_sizes, rows):
    most = len(rows) + len(cut_rows)
    words, units, per_row = np.empty(most, np.int32), np.empty(most, np.int32), np.empty(len(rows), np.int64)
    count = cut = 0
    for index in range(len(rows)):
        row = rows[index]
        while cut < len(cut_rows) and cut_rows[cut] < row:
            cut += 1
        first = count
        first_word = first_unit = 0
        while cut < len(cut_rows) and cut_rows[cut] == row:
            words[count], units[count] = cut_words[cut] - first_word, cut_units[cut] - first_unit
            first_word, first_unit = cut_words[cut], cut_units[cut]
            count += 1
            cut += 1
        words[count], units[count] = word_sizes[row] - first_word, unit_sizes[row] - first_unit
        count += 1
        per_row[index] = count - first
    return words[:count], units[:count], per_row


@compiled
def _chunks(cut_rows, cut_words, cut_units, word_sizes, unit_sizes, rows):
    words, units, per_row = _chunk_sizes(cut_rows, cut_words, cut_units, word_sizes, unit_sizes, rows)
    pieces = np.empty((5, len(words)), np.int64)  # row, first word, end word, first unit, end unit
    count = 0
    for index in range(len(rows)):
        first_word = first_unit = 0
        for _ in range(per_row[index]):
            pieces[0, count], pieces[1, count], pieces[2, count] = rows[index], first_word, first_word + words[count]
            pieces[3, count], pieces[4, count] = first_unit, first_unit + units[count]
            first_word, first_unit = first_word + words[count], first_unit + units[count]
            count += 1
    return pieces[0], pieces[1], pieces[2], pieces[3], pieces[4]


def sentence_ends(text: str, words: list[str], offsets: list[int] | None = None) -> set[int]:
    """Word counts after which the transcript ends a sentence (., !, ?, …, and CJK full stops);
    `offsets`: the words' `languages.word_offsets`, when already known."""
    return punctuated_ends(text, words, SENTENCE_MARKS, offsets)


def runs(pieces: Pieces, flags: np.ndarray) -> tuple[Pieces, np.ndarray]:
    """Consecutive pieces of one utterance with the same flag merged into one; (runs, their flags)."""
    starts = np.ones(len(flags), bool)
    starts[1:] = (pieces.rows[1:] != pieces.rows[:-1]) | (flags[1:] != flags[:-1])
    ends = np.ones(len(flags), bool)
    ends[:-1] = starts[1:]
    first, last = np.flatnonzero(starts), np.flatnonzero(ends)
    merged = Pieces(pieces.rows[first], pieces.first_word[first], pieces.end_word[last], pieces.first_unit[first],
                    pieces.end_unit[last])
    return merged, flags[first]


def _padded(values: np.ndarray, rows: np.ndarray, count: int, fill) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-utterance values laid out as a (count, longest + 1) matrix padded with `fill`; also
    each value's place in the flattened matrix and each utterance's length."""
    sizes = np.bincount(rows, minlength=count)
    _, columns = _positions(sizes)
    width = int(sizes.max(initial=0)) + 1
    places = rows * width + columns
    matrix = np.full((count, width), fill, dtype=np.asarray(values).dtype)
    matrix.ravel()[places] = values
    return matrix, places, sizes


def choose_speech(chunk_words: np.ndarray, chunk_rows: np.ndarray, keys: np.ndarray, speech_ratio: float,
                  span_mean: float, span_in_words: bool = True, first_draw: int = 0, max_tries: int = 100) -> np.ndarray:
    """Which chunks become speech (one flag per chunk). The chunks of utterance i (chunk_rows == i;
    `chunk_rows` ascending) draw from stream keys[i], from draw `first_draw` on.

    Spans of Poisson(span_mean) words (or chunks, e.g. sentences, when not `span_in_words`) go at
    random free places, each taking chunks while the speech stays within the target, `speech_ratio`
    of the words: the set just under it. The first chunk refused for going over makes the set just
    over it, which is taken with probability (target − under) / that chunk's words, so a sample's
    expected speech is its target exactly and the ratio over a corpus is unbiased whatever the
    chunk sizes. The over chunk is never taken when it would leave no text. An utterance none of
    whose chunks fits under its target (every chunk above 30% of a short one, say) still gets its
    smallest chunk, so that it stays interleaved: the one place the policy overshoots."""
    chunk_rows = np.asarray(chunk_rows, np.int64)
    if (chunk_rows[1:] < chunk_rows[:-1]).any():
        raise ValueError("chunk_rows must be ascending: each utterance's chunks together, in order")
    bounds = np.searchsorted(chunk_rows, np.arange(len(keys) + 1))
    return choose_speech_in(chunk_words, bounds[:-1], bounds[1:], keys, speech_ratio, span_mean, span_in_words, first_draw,
                            max_tries)


def choose_speech_in(chunk_words: np.ndarray, firsts: np.ndarray, ends: np.ndarray, keys: np.ndarray, speech_ratio: float,
                     span_mean: float, span_in_words: bool = True, first_draw: int = 0, max_tries: int = 100) -> np.ndarray:
    """`choose_speech` for the samples whose chunks are firsts[i]:ends[i] of `chunk_words` (the
    ranges apart, ascending), sample i drawing from stream keys[i]; the chunks of no range are text."""
    words, firsts, ends = (np.asarray(values, np.int64) for values in (chunk_words, firsts, ends))
    # the compiled pass writes within these ranges unchecked
    if not len(firsts) == len(ends) == len(keys):
        raise ValueError(f"{len(keys)} keys for {len(firsts)} range starts and {len(ends)} ends")
    if len(firsts) and (firsts[0] < 0 or ends[-1] > len(words) or (ends < firsts).any() or (firsts[1:] < ends[:-1]).any()):
        raise ValueError(f"the chunk ranges must lie apart and ascending within the {len(words)} chunks")
    return _choose_speech(words, firsts, ends, np.asarray(keys, np.uint64), float(speech_ratio), _poisson_cdf(span_mean),
                          bool(span_in_words), int(first_draw), int(max_tries))


@compiled
def _choose_speech(words, firsts, ends, keys, speech_ratio, span_cdf, span_in_words, first_draw, max_tries):
    speech = np.zeros(len(words), np.bool_)
    for row in range(len(keys)):
        first, count, key = firsts[row], ends[row] - firsts[row], keys[row]
        target = speech_ratio * np.float64(words[first : first + count].sum())
        spoken, free, over = 0, count, -1  # over: the first chunk refused for going over, -1 until one is
        for attempt in range(max_tries):
            # go on while a free chunk fits, or, once none does, until one has been refused
            if spoken >= target or free == 0:
                break
            if over >= 0:
                smallest = -1
                for index in range(first, first + count):
                    if not speech[index] and (smallest < 0 or words[index] < smallest):
                        smallest = words[index]
                if spoken + smallest > target:
                    break
            wanted = max(np.searchsorted(span_cdf, _uniform(key, first_draw + 2 * attempt), side="right"), 1)
            at = min(int(_uniform(key, first_draw + 2 * attempt + 1) * count), count - 1)
            taken = 0
            while at < count and not speech[first + at] and taken < wanted:
                size = words[first + at]
                if spoken + size > target:
                    if over < 0:
                        over = at
                    break
                speech[first + at] = True
                spoken += size
                free -= 1
                taken += size if span_in_words else 1
                at += 1
        last = _uniform(key, first_draw + 2 * max_tries)
        if over >= 0 and spoken > 0 and free > 1:
            speech[first + over] = last < (target - spoken) / words[first + over]
        elif spoken == 0 and target > 0 and count > 1:
            # the smallest chunk, the first of equals after a random place
            start, best = min(int(last * count), count - 1), -1
            for step in range(count):
                index = first + (start + step) % count
                if not speech[index] and (best < 0 or words[index] < words[best]):
                    best = index
            speech[best] = True
    return speech


def consecutive_spans(chunk_words: np.ndarray, chunk_rows: np.ndarray, keys: np.ndarray, span_mean: float,
                      span_in_words: bool = True) -> np.ndarray:
    """Each chunk's span number within its utterance: spans of Poisson(span_mean) words (or chunks)
    one after another from the start, span s of utterance i sized by draw s of stream keys[i]."""
    count = len(keys)
    words, places, sizes = _padded(np.asarray(chunk_words, np.int64), chunk_rows, count, 0)
    span_of = np.zeros_like(words)
    span, taken = np.zeros(count, np.int64), np.zeros(count, np.int64)
    wanted = np.maximum(poisson(uniforms(keys, 0), span_mean), 1)
    for column in range(words.shape[1] - 1):
        rows = np.flatnonzero(sizes > column)
        done = rows[taken[rows] >= wanted[rows]]
        span[done] += 1
        taken[done] = 0
        wanted[done] = np.maximum(poisson(uniforms(keys[done], span[done]), span_mean), 1)
        span_of[rows, column] = span[rows]
        taken[rows] += words[rows, column] if span_in_words else 1
    return span_of.ravel()[places]
