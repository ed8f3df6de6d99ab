"""Hallucinations: a phrase going round in a loop, and boilerplate that recognisers emit over
silence or music ("thanks for watching", subtitle credits)."""

import os

import numpy as np

from sylm_data.quality import wordlists
from sylm_data.quality.words import UNSPACED, language_of, words

# a third of the words going round in a loop: the recogniser was stuck, the text no longer follows the audio
DEFAULT_MAX_LOOP_SHARE = 0.3
# mostly boilerplate: a recogniser's filler over silence or a caption credit, not what was said
DEFAULT_MAX_BOILERPLATE_SHARE = 0.5

MAX_N = 6  # the longest looping n-gram, in words
MIN_REPEATS = 3
MIN_LOOP_WORDS = 6


def loop_share(text: str, language: str, *, max_n: int = MAX_N, min_repeats: int = MIN_REPEATS,
               min_loop_words: int = MIN_LOOP_WORDS) -> float:
    """Share of the words of `text` inside a loop: an n-gram (n = 1..`max_n` words) said at least
    `min_repeats` times in a row, `min_loop_words` words or more in all ("no no no" is speech, "I'm
    sorry I'm sorry I'm sorry" is a loop). A loop's last round may be cut short. In zh, yue and ja,
    whose words are characters or morphemes, n goes up to 2 * `max_n`. 0.0 without words."""
    language = language_of(language)
    ids = _ids(words(text, language))
    if ids.size == 0:
        return 0.0
    inside = np.zeros(ids.size, dtype=bool)
    longest = 2 * max_n if language in UNSPACED else max_n
    for n in range(1, min(longest, ids.size // min_repeats) + 1):
        periodic = np.concatenate(([False], ids[n:] == ids[:-n], [False]))  # word i + n repeats word i
        edges = np.flatnonzero(np.diff(periodic.astype(np.int8)))
        for start, end in zip(edges[::2], edges[1::2]):  # words start .. end + n - 1 repeat every n
            length = end - start + n
            if length >= n * min_repeats and length >= min_loop_words:
                inside[start:end + n] = True
    return float(inside.mean())


def boilerplate_share(text: str, language: str, extra: str | os.PathLike | None = None) -> float:
    """Share of the words of `text` inside a boilerplate phrase of `language` (data/boilerplate.tsv,
    plus the user file `extra`: see `wordlists`). 0.0 without words or without phrases for `language`."""
    language = language_of(language)
    found = words(text, language)
    return wordlists.covered(found, wordlists.matcher("boilerplate", language, extra)) / len(found) if found else 0.0


def _ids(found: list[str]) -> np.ndarray:
    index: dict[str, int] = {}
    return np.array([index.setdefault(word, len(index)) for word in found], dtype=np.int64)
