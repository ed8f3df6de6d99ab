"""Language codes (normalised to ISO 639-1) and the writing systems each language uses."""

import bisect
import functools
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.compiled import compiled

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


def word_offset_table(texts: pa.Array, words: pa.Array, word_bounds: np.ndarray) -> np.ndarray:
    """`word_offsets` of many transcripts at once, each followed by its transcript's length: text
    i's words are words[word_bounds[i]:word_bounds[i + 1]], and its entries the table's
    [word_bounds[i] + i, word_bounds[i + 1] + i + 1), in characters. The search runs on UTF-8
    bytes: a word's bytes can only match where a character starts, so the first byte match is
    `str.find`'s."""
    return _word_offset_table(*string_buffers(texts), *string_buffers(words), np.asarray(word_bounds, np.int64))


@compiled
def _word_offset_table(text_bounds, text_bytes, word_byte_bounds, word_bytes, word_bounds):
    table = np.empty(len(word_byte_bounds) - 1 + len(word_bounds) - 1, np.int64)
    for text in range(len(word_bounds) - 1):
        end = text_bounds[text + 1]
        position, characters = text_bounds[text], 0  # where the search starts, and the characters before it
        for word in range(word_bounds[text], word_bounds[text + 1]):
            first, size = word_byte_bounds[word], word_byte_bounds[word + 1] - word_byte_bounds[word]
            found, passed = -1, 0  # the bytes the search passes over are counted as it goes
            if size == 0:
                found = position
            else:
                lead = word_bytes[first]
                for start in range(position, end - size + 1):
                    if text_bytes[start] == lead:
                        matched = 1
                        while matched < size and text_bytes[start + matched] == word_bytes[first + matched]:
                            matched += 1
                        if matched == size:
                            found = start
                            break
                    passed += (text_bytes[start] & 0xC0) != 0x80
            if found >= 0:
                table[word + text] = characters + passed
                for index in range(first, first + size):  # the word's own characters (a loop here: a call was slower)
                    passed += (word_bytes[index] & 0xC0) != 0x80
                characters += passed
                position = found + size
            else:  # not found: the word starts where the previous one ended
                table[word + text] = characters
        table[word_bounds[text + 1] + text] = characters + _characters(text_bytes, position, end)
    return table


@compiled
def _characters(data, start, end):
    """The UTF-8 characters that start in data[start:end] (continuation bytes do not count)."""
    count = 0
    for index in range(start, end):
        count += (data[index] & 0xC0) != 0x80
    return count


def string_buffers(strings: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A string array's value bounds (len + 1, into the bytes) and its UTF-8 bytes, a null as an
    empty string, with one zero byte of padding after them (so that a bound is always a valid index)."""
    strings = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    if strings.null_count:
        strings = pc.fill_null(strings, "")
    if strings.type not in (pa.string(), pa.large_string()):
        strings = strings.cast(pa.large_string())
    _, bounds, data = strings.buffers()
    bound_type = np.int32 if strings.type == pa.string() else np.int64
    bounds = np.frombuffer(bounds, bound_type)[strings.offset : strings.offset + len(strings) + 1].astype(np.int64)
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return bounds - bounds[0], np.append(data[bounds[0] : bounds[-1]], np.uint8(0))


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


def punctuated_ends_batch(texts: pa.Array, words: pa.Array, word_bounds: np.ndarray, offsets: np.ndarray, marks: set[str],
                          rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`punctuated_ends` of texts `rows` at once, as (text, word count) pairs: text i's words are
    words[word_bounds[i]:word_bounds[i + 1]], `offsets` their flat `word_offsets`. One compiled
    pass over each text's UTF-8 bytes finds the marks (a valid text never holds a mark's bytes but
    as that mark) and counts characters as it goes, as `word_offset_table` counts them; a word's
    characters are counted only where a mark follows its start."""
    rows = np.asarray(rows, np.int64)
    if len(rows) and (rows[0] < 0 or rows[-1] >= len(texts) or (rows[1:] <= rows[:-1]).any()):
        # the compiled pass keeps each (text, word count) once, each text once: its output's bound
        raise ValueError(f"rows must be ascending, each once, among the {len(texts)} texts")
    if not len(offsets):  # no words: no word ends a sentence
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return _punctuated_ends(*string_buffers(texts), *string_buffers(pa.array(sorted(marks))), *string_buffers(words),
                            np.asarray(word_bounds, np.int64), np.asarray(offsets, np.int64), rows)


@compiled
def _punctuated_ends(text_bounds, text_bytes, mark_bounds, mark_bytes, word_byte_bounds, word_bytes, word_bounds, offsets, rows):
    leads = np.zeros(256, np.bool_)  # the bytes a mark starts with: the only places worth comparing
    for mark in range(len(mark_bounds) - 1):
        if mark_bounds[mark + 1] > mark_bounds[mark]:
            leads[mark_bytes[mark_bounds[mark]]] = True
    most = len(word_bounds) - 1 + word_bounds[-1] - word_bounds[0]  # each (text, word count) once: counts only grow within a text
    found_rows, found_counts, found = np.empty(most, np.int64), np.empty(most, np.int64), 0
    for row in rows:
        end, first_word, end_word = text_bounds[row + 1], word_bounds[row], word_bounds[row + 1]
        word, characters = first_word, 0  # the words that start at or before the current character; characters before it
        for index in range(text_bounds[row], end):
            if leads[text_bytes[index]]:
                for mark in range(len(mark_bounds) - 1):
                    size = mark_bounds[mark + 1] - mark_bounds[mark]
                    matched = 0
                    while matched < size and index + matched < end and text_bytes[index + matched] == mark_bytes[mark_bounds[mark] + matched]:
                        matched += 1
                    if size and matched == size:
                        while word < end_word and offsets[word] <= characters:
                            word += 1
                        if word > first_word and characters >= offsets[word - 1] + _characters(
                                word_bytes, word_byte_bounds[word - 1], word_byte_bounds[word]):  # not inside it
                            if found == 0 or found_rows[found - 1] != row or found_counts[found - 1] != word - first_word:
                                found_rows[found], found_counts[found] = row, word - first_word
                                found += 1
                        break
            characters += (text_bytes[index] & 0xC0) != 0x80
    return found_rows[:found], found_counts[:found]


@functools.lru_cache(maxsize=8)
def _mark_pattern(marks: frozenset[str]) -> re.Pattern:
    return re.compile("[" + re.escape("".join(sorted(marks))) + "]")


WRITTEN_WITHOUT_SPACES = frozenset({"zh", "yue", "ja", "th", "lo", "km", "my", "bo"})


def word_joiner(language: str) -> str:
    """What goes between two pieces of text of `language` written one after the other."""
    return "" if language in WRITTEN_WITHOUT_SPACES else " "
