"""Inappropriate words: profanity, sexual vulgarity and slurs from a word list per language."""

import os

from sylm_data.quality import wordlists
from sylm_data.quality.words import language_of, words

# any listed word: the shipped lists hold only words that are unfit in every context
DEFAULT_MAX_SHARE = 0.0


def inappropriate_share(text: str, language: str, extra: str | os.PathLike | None = None) -> float:
    """Share of the words of `text` that are listed for `language` (data/inappropriate.tsv, plus the
    user file `extra`: see `wordlists`). 0.0 without words or without a list for `language`."""
    language = language_of(language)
    found = words(text, language)
    return wordlists.covered(found, wordlists.matcher("inappropriate", language, extra)) / len(found) if found else 0.0
