"""Language codes (normalised to ISO 639-1) and the writing systems each language uses."""

import bisect
import functools
import re
import unicodedata

# ISO 639-2/3 and common spellings -> 639-1, for the languages the speech sources carry most.
_ALIASES = {
    "eng": "en", "english": "en", "zho": "zh", "chi": "zh", "cmn": "zh", "chinese": "zh", "mandarin": "zh",
    "yue": "yue", "cantonese": "yue", "deu": "de", "ger": "de", "german": "de", "fra": "fr", "fre": "fr",
    "french": "fr", "jpn": "ja", "japanese": "ja", "kor": "ko", "korean": "ko", "spa": "es", "spanish": "es",
    "ita": "it", "italian": "it", "por": "pt", "portuguese": "pt", "rus": "ru", "russian": "ru",
    "nld": "nl", "dut": "nl", "pol": "pl", "tur": "tr", "ara": "ar", "hin": "hi", "vie": "vi",
    "ukr": "uk", "swe": "sv", "ces": "cs", "cze": "cs", "ell": "el", "gre": "el", "heb": "he", "tha": "th",
    "ind": "id", "fas": "fa", "per": "fa", "ron": "ro", "rum": "ro", "hun": "hu", "fin": "fi", "dan": "da",
    # withdrawn ISO 639-1 codes that YouTube (and so YODAS2's subset names, e.g. iw000) still uses;
    # Serbo-Croatian goes to Serbian, the language YouTube files most of it under
    "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro", "sh": "sr",
}
# ISO 639-1 codes (plus yue, which has none); anything else is unknown.
_ISO_639_1 = set(
    "aa ab af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz "
    "ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii "
    "ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi "
    "mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw "
    "sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk "
    "ur uz ve vi vo wa wo xh yi yo za zh zu yue".split()
)

# Scripts by the first word of a character's Unicode name; languages not listed are not checked.
_LATIN = frozenset({"LATIN"})
SCRIPTS = {
    **{code: _LATIN for code in "en de fr es it pt nl pl tr vi sv cs ro hu fi da id ca eu gl sk sl hr et lv lt ms sw".split()},
    **{code: frozenset({"CYRILLIC"}) for code in "ru uk bg be mk kk".split()},
    "sr": frozenset({"CYRILLIC", "LATIN"}),  # Serbian (and Serbo-Croatian) is written in both
    "zh": frozenset({"CJK"}),
    "yue": frozenset({"CJK"}),
    "ja": frozenset({"CJK", "HIRAGANA", "KATAKANA"}),
    "ko": frozenset({"HANGUL", "CJK"}),
    "ar": frozenset({"ARABIC"}),
    "fa": frozenset({"ARABIC"}),
    "el": frozenset({"GREEK"}),
    "he": frozenset({"HEBREW"}),
    "hi": frozenset({"DEVANAGARI"}),
    "th": frozenset({"THAI"}),
}


def normalize(code: str | None) -> str | None:
    """'EN', 'en-US', 'en_us', 'eng' -> 'en'; None for anything that is not a known language."""
    if not code or not isinstance(code, str):
        return None
    code = code.strip().lower().replace("_", "-")
    base = code.split("-")[0]
    base = _ALIASES.get(base, base)
    return base if base in _ISO_639_1 else None


def script(char: str) -> str | None:
    """The script of a letter (first word of its Unicode name), None for non-letters."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    return name.split(" ")[0] if name else None


def foreign_letter_share(text: str, language: str) -> float:
    """Share of the letters in `text` written in a script `language` does not use (0 if unchecked)."""
    expected = SCRIPTS.get(language)
    if expected is None:
        return 0.0
    scripts = [s for s in map(script, text) if s is not None]
    if not scripts:
        return 0.0
    return sum(s not in expected for s in scripts) / len(scripts)


def word_offsets(text: str, words: list[str]) -> list[int]:
    """Where each word (taken from `text`, in order) starts in `text`; a word not found there
    starts where the previous one ended."""
    offsets, position, find = [], 0, text.find
    for word in words:
        found = find(word, position)
        if found >= 0:
            position = found + len(word)
        offsets.append(found if found >= 0 else position)
    return offsets


def punctuated_ends(text: str, words: list[str], marks: set[str], offsets: list[int] | None = None) -> set[int]:
    """Word counts after which `text` has one of `marks` before the next word (`offsets`: the
    words' `word_offsets`, when already known). Only the marks in the text are looked at."""
    offsets = word_offsets(text, words) if offsets is None else offsets
    counts = set()
    for mark in _mark_pattern(frozenset(marks)).finditer(text):
        count = bisect.bisect_right(offsets, mark.start(), 0, len(words))  # the words that start before the mark
        if count and mark.start() >= offsets[count - 1] + len(words[count - 1]):  # not inside the last of them
            counts.add(count)
    return counts


@functools.lru_cache(maxsize=8)
def _mark_pattern(marks: frozenset[str]) -> re.Pattern:
    return re.compile("[" + re.escape("".join(sorted(marks))) + "]")


WRITTEN_WITHOUT_SPACES = frozenset({"zh", "yue", "ja", "th", "lo", "km", "my", "bo"})


def word_joiner(language: str) -> str:
    """What goes between two pieces of text of `language` written one after the other."""
    return "" if language in WRITTEN_WITHOUT_SPACES else " "
