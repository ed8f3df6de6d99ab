"""Chunks and speech spans: the pure core of interleaving (shared with synthesize).

A chunk boundary may only fall where a unit boundary meets a gap between words, within a
tolerance, compared in integer milliseconds. Speech spans are Poisson-sized runs of chunks
placed at random without overlap until speech holds `speech_ratio` of the words.
"""

import math
from typing import NamedTuple

import numpy as np

from sylm_data.languages import punctuated_ends

SENTENCE_MARKS = set(".!?…。！？")


_MASK = 2**64 - 1


class SampleRandom:
    """One sample's random stream (SplitMix64): a handful of draws per sample, where seeding a
    numpy generator for each sample would cost more than the sample's other work."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def _next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        """Uniform in [0, 1)."""
        return (self._next() >> 11) * 2.0**-53

    def integers(self, high: int) -> int:
        """Uniform in 0..high-1 (multiply-shift; the bias is below 2**-50 for any list length)."""
        return (self._next() * high) >> 64

    def poisson(self, mean: float) -> int:
        """Poisson by inversion for the small means spans use; a rounded normal above 30."""
        if mean > 30:
            radius = math.sqrt(-2 * math.log(1 - self.random()))
            return max(0, round(mean + math.sqrt(mean) * radius * math.cos(2 * math.pi * self.random())))
        draw, count = self.random(), 0
        probability = cumulative = math.exp(-mean)
        while draw >= cumulative and probability > 0:
            count += 1
            probability *= mean / count
            cumulative += probability
        return count


class Chunk(NamedTuple):
    first_word: int
    end_word: int  # exclusive
    first_unit: int
    end_unit: int  # exclusive

    @property
    def words(self) -> int:
        return self.end_word - self.first_word


def word_cuts(word_starts: list[int], word_ends: list[int], unit_starts: list[int], unit_ends: list[int],
              tolerance_ms: int) -> dict[int, int]:
    """Word index k -> unit index j such that cutting before word k and before unit j is allowed:
    unit j starts (where unit j - 1 ends) inside the gap between words k - 1 and k, give or take
    `tolerance_ms`. When several unit boundaries qualify, the one nearest the gap's middle wins
    (the earlier on a tie)."""
    return batch_word_cuts([len(word_starts)], word_starts, word_ends, [len(unit_starts)], unit_starts, unit_ends,
                           tolerance_ms)[0]


def batch_word_cuts(word_sizes, word_starts, word_ends, unit_sizes, unit_starts, unit_ends,
                    tolerance_ms: int) -> list[dict[int, int]]:
    """`word_cuts` of many utterances at once, vectorised, over flat arrays (Arrow's list layout:
    utterance i owns the next `word_sizes[i]` words and `unit_sizes[i]` units). Every utterance's
    unit boundaries go into one sorted array keyed by utterance, then time (doubled, so that gap
    middles stay integers)."""
    word_rows, word_index = _positions(word_sizes)
    unit_rows, unit_index = _positions(unit_sizes)
    w_start, w_end = np.asarray(word_starts, np.int64), np.asarray(word_ends, np.int64)
    u_start, u_end = np.asarray(unit_starts, np.int64), np.asarray(unit_ends, np.int64)
    span = 2 * int(max(w_end.max(initial=0), u_end.max(initial=0), w_start.max(initial=0), u_start.max(initial=0))) + 2
    # unit boundaries: unit j > 0 of an utterance that starts where unit j - 1 ends
    later = np.flatnonzero((unit_index[1:] > 0) & (u_end[:-1] == u_start[1:])) + 1
    boundary_key = unit_rows[later] * span + 2 * u_start[later]
    gaps = np.flatnonzero(word_index[1:] > 0) + 1  # word k > 0: the gap before it
    rows = word_rows[gaps]
    middle2 = w_end[gaps - 1] + w_start[gaps]
    low2, high2 = 2 * (w_end[gaps - 1] - tolerance_ms), 2 * (w_start[gaps] + tolerance_ms)
    after = np.searchsorted(boundary_key, rows * span + middle2, side="left")

    def candidate(position):
        inside = (position >= 0) & (position < len(later))
        position = position.clip(0, max(len(later) - 1, 0))
        if not len(later):
            return inside, position, np.zeros_like(middle2)
        time2 = 2 * u_start[later[position]]
        fits = inside & (unit_rows[later[position]] == rows) & (low2 <= time2) & (time2 <= high2)
        return fits, position, np.abs(time2 - middle2)

    before_fits, before, before_distance = candidate(after - 1)
    after_fits, after, after_distance = candidate(after)
    take_before = before_fits & (~after_fits | (before_distance <= after_distance))
    chosen = np.where(take_before, before, after)
    found = take_before | after_fits
    cuts: list[dict[int, int]] = [{} for _ in range(len(word_sizes))]
    units_at = unit_index[later[chosen[found]]] if len(later) else np.zeros(0, np.int64)
    for row, word, unit in zip(rows[found].tolist(), word_index[gaps[found]].tolist(), units_at.tolist()):
        cuts[row][word] = unit
    return cuts


def _positions(sizes) -> tuple[np.ndarray, np.ndarray]:
    """For flat items grouped by `sizes`: (the group of each item, its index within the group)."""
    sizes = np.asarray(sizes, np.int64)
    rows = np.repeat(np.arange(len(sizes)), sizes)
    return rows, np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)


def chunks(word_count: int, unit_count: int, cuts: dict[int, int], allowed: set[int] | None = None) -> list[Chunk]:
    """Cut the utterance at `cuts` (restricted to word indices in `allowed`, when given). Every word
    and every unit lands in exactly one chunk, in order; edge silence units stay with the edge chunks."""
    points = sorted(cuts) if allowed is None else sorted(k for k in cuts if k in allowed)
    words = [0, *points, word_count]
    units = [0, *(cuts[k] for k in points), unit_count]
    return list(map(Chunk._make, zip(words, words[1:], units, units[1:])))


def sentence_ends(text: str, words: list[str]) -> set[int]:
    """Word counts after which the transcript ends a sentence (., !, ?, …, and CJK full stops)."""
    return punctuated_ends(text, words, SENTENCE_MARKS)


def choose_speech(chunk_words: list[int], speech_ratio: float, span_mean: float, rng: SampleRandom,
                  span_in_words: bool = True, max_tries: int = 100) -> list[bool]:
    """Which chunks become speech: spans of Poisson(span_mean) words (or chunks, e.g. sentences, when
    not `span_in_words`) at random free places, until the speech words reach `speech_ratio` of all
    words. A span stops where taking one more chunk would land farther from the target than
    stopping, so the ratio is unbiased over a corpus rather than always overshot."""
    total = sum(chunk_words)
    target = speech_ratio * total
    speech = [False] * len(chunk_words)
    spoken = 0
    for _ in range(max_tries):
        if spoken >= target or all(speech):
            break
        length = max(1, rng.poisson(span_mean))
        start = rng.integers(len(chunk_words))
        if speech[start]:
            continue
        taken = 0
        for index in range(start, len(chunk_words)):
            if taken >= length or speech[index] or spoken >= target:
                break
            # take the chunk when that lands nearer the target than stopping short of it
            if spoken + chunk_words[index] - target > target - spoken:
                break
            speech[index] = True
            spoken += chunk_words[index]
            taken += chunk_words[index] if span_in_words else 1
    return speech
