"""Transcript words as Qwen3-ForcedAligner's authors split them: the units the aligner times, and so
the units that text-to-token spans are counted in.

Every unit keeps only letters, digits and apostrophes ("don't", "3.5" -> "35", "U.S." -> "US"), and
units left empty are dropped. Japanese: nagisa's morphemes (the `ja` extra). Korean: whitespace
words kept whole, as transformers keeps them; the authors' package also splits particles off
(학교에 -> 학교 + 에) with a word list of its own, which is not shipped here. Every other language:
whitespace words, with CJK ideographs split out one per character (Chinese and Cantonese are
character by character).
"""

import functools
import unicodedata

from sylm_data import languages

# CJK ideograph blocks the authors split out one per character (Unified, Extensions A-E, Compatibility)
_IDEOGRAPHS = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF))
_OPENING = ("Ps", "Pi")  # brackets and quotes that open: they go with the word after them


class MissingExtra(ImportError):
    """A language whose splitter is an optional dependency that is not installed."""


def split_words(text: str, language: str) -> list[str]:
    """The aligner's units of `text` in `language` (an ISO code: zh, yue, ja, ko, en, ...), in order,
    exactly as the authors' Qwen3-ForcedAligner package splits them (Korean aside: see above).

    Raises MissingExtra when the language needs an extra that is not installed (ja: nagisa)."""
    return [word for word, _, _ in word_spans(text, language)]


def word_spans(text: str, language: str) -> list[tuple[str, int, int]]:
    """`split_words`, each unit with where it is written in `text`: (word, start, end), character
    offsets. `start` is where a cut before the word falls (after the whitespace before it, and
    before any opening bracket or quote that sticks to it); `end` follows its last kept character.
    Starts never decrease; the text from one word's start to the next one's holds that word whole,
    with the marks after it.
    Japanese words are as nagisa reads them (NFKC: "ＡＩ" -> "AI") and placed on the characters
    they came from."""
    language = languages.normalize(language) or language
    if language == "ja":
        located = _japanese(text)
    else:
        located = _whitespace_words(text, split_ideographs=language != "ko")
    spans, previous_end = [], 0
    for word, first, end in located:
        first, end = max(first, previous_end), max(end, previous_end)  # two words from one character ("½" -> 1, 2)
        spans.append((word, _cut(text, previous_end, first), end))
        previous_end = end
    return spans


def _is_kept(char: str) -> bool:
    return char == "'" or unicodedata.category(char)[0] in "LN"


def _is_ideograph(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _IDEOGRAPHS)


def _whitespace_words(text: str, split_ideographs: bool) -> list[tuple[str, int, int]]:
    """(word, first kept character, after the last) per whitespace word, ideographs one by one."""
    words: list[tuple[str, int, int]] = []
    kept: list[str] = []
    first = end = 0

    def flush() -> None:
        if kept:
            words.append(("".join(kept), first, end))
            kept.clear()

    for index, char in enumerate(text):
        if char.isspace():
            flush()
        elif split_ideographs and _is_ideograph(char):
            flush()
            words.append((char, index, index + 1))
        elif _is_kept(char):
            if not kept:
                first = index
            kept.append(char)
            end = index + 1
    flush()
    return words


@functools.cache
def _nagisa():
    try:
        import nagisa
    except ImportError:
        raise MissingExtra('Japanese word splitting needs nagisa: pip install "sylm-data[ja]"') from None
    return nagisa


def _japanese(text: str) -> list[tuple[str, int, int]]:
    """nagisa's words, cleaned. nagisa reads its own normalized copy of the text (NFKC: "ＡＩ" -> "AI",
    spaces made ideographic); its words are mapped back to the characters they came from."""
    words = _nagisa().tagging(text).words
    origins = _nagisa_origins(text, "".join(words))
    located, at, previous_end = [], 0, 0
    for raw in words:
        begin, at = at, at + len(raw)
        kept = [begin + offset for offset, char in enumerate(raw) if _is_kept(char)]
        if not kept:
            continue
        word = "".join(raw[position - begin] for position in kept)
        if origins is None:  # not mappable: an empty span where the last word ended
            located.append((word, previous_end, previous_end))
            continue
        first, end = origins[kept[0]][0], origins[kept[-1]][1]
        located.append((word, first, end))
        previous_end = end
    return located


def _nagisa_origins(text: str, read: str) -> list[tuple[int, int]] | None:
    """For each character of `read` (the text as nagisa read it: right-stripped, NFKC, spaces made
    ideographic), the characters of `text` it comes from (start, end); None when the normalization
    cannot be followed character by character."""
    stripped = text.rstrip()
    origins: list[tuple[int, int]] = []
    pieces: list[str] = []
    start = 0
    for index in range(1, len(stripped) + 1):  # NFKC composes only within a base character and its marks
        if index == len(stripped) or not unicodedata.combining(stripped[index]):
            normalized = unicodedata.normalize("NFKC", stripped[start:index])
            pieces.append(normalized)
            origins += [(start, index)] * len(normalized)
            start = index
    expected = "".join(pieces).replace("İ", "I").replace(" ", "\u3000")
    return origins if expected == read else None


def _cut(text: str, previous_end: int, first: int) -> int:
    """Where to cut between a word ending at `previous_end` and the next one's first kept
    character `first`: after the last whitespace between them, else before the opening brackets
    and quotes just ahead of `first` (trailing punctuation stays with the word before)."""
    gap = text[previous_end:first]
    for offset in range(len(gap) - 1, -1, -1):
        if gap[offset].isspace():
            return previous_end + offset + 1
    cut = first
    while cut > previous_end and unicodedata.category(text[cut - 1]) in _OPENING:
        cut -= 1
    return cut
