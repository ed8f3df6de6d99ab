"""Chunks and speech spans: the pure core of interleaving (shared with synthesize).

A chunk boundary may only fall where a unit boundary meets a gap between words, within a
tolerance, compared in integer milliseconds. Speech spans are Poisson-sized runs of chunks
placed at random without overlap until speech holds `speech_ratio` of the words.
"""

import bisect
from dataclasses import dataclass

import numpy as np

from sylm_data.languages import punctuated_ends

SENTENCE_MARKS = set(".!?…。！？")


@dataclass(frozen=True)
class Chunk:
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
    `tolerance_ms`. When several unit boundaries qualify, the one nearest the gap's middle wins."""
    cuts = {}
    boundaries = [j for j in range(1, len(unit_starts)) if unit_ends[j - 1] == unit_starts[j]]
    times = [unit_starts[j] for j in boundaries]  # non-decreasing: units are in time order
    for k in range(1, len(word_starts)):
        low, high = word_ends[k - 1] - tolerance_ms, word_starts[k] + tolerance_ms
        middle = (word_ends[k - 1] + word_starts[k]) / 2
        after = bisect.bisect_left(times, middle)
        # the nearest boundary to the middle is just before or just after it (the earlier on a tie)
        near = [i for i in (after - 1, after) if 0 <= i < len(times) and low <= times[i] <= high]
        if near:
            cuts[k] = boundaries[min(near, key=lambda i: abs(times[i] - middle))]
    return cuts


def chunks(word_count: int, unit_count: int, cuts: dict[int, int], allowed: set[int] | None = None) -> list[Chunk]:
    """Cut the utterance at `cuts` (restricted to word indices in `allowed`, when given). Every word
    and every unit lands in exactly one chunk, in order; edge silence units stay with the edge chunks."""
    points = sorted(k for k in cuts if allowed is None or k in allowed)
    words = [0, *points, word_count]
    units = [0, *(cuts[k] for k in points), unit_count]
    return [Chunk(words[i], words[i + 1], units[i], units[i + 1]) for i in range(len(words) - 1)]


def sentence_ends(text: str, words: list[str]) -> set[int]:
    """Word counts after which the transcript ends a sentence (., !, ?, …, and CJK full stops)."""
    return punctuated_ends(text, words, SENTENCE_MARKS)


def choose_speech(chunk_words: list[int], speech_ratio: float, span_mean: float, rng: np.random.Generator,
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
        length = max(1, int(rng.poisson(span_mean)))
        start = int(rng.integers(len(chunk_words)))
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
