"""A transcript's words as the checks see them: `split_words`' units, case-folded, split once per row."""

import functools

from sylm_data import languages
from sylm_data.align.split import word_spans

# written without spaces: `split_words` gives characters (zh, yue) or morphemes (ja), not words
UNSPACED = frozenset({"zh", "yue", "ja"})


def language_of(code: str) -> str:
    return languages.normalize(code) or code


@functools.lru_cache(maxsize=256)  # every check of one row asks for the same split; nagisa (ja) is slow
def spans(text: str, language: str) -> tuple[tuple[str, int, int], ...]:
    """(case-folded word, start, end) per word of `text`, as `split.word_spans` places them."""
    return tuple((word.casefold(), start, end) for word, start, end in word_spans(text, language))


def words(text: str, language: str) -> list[str]:
    return [word for word, _, _ in spans(text, language)]
