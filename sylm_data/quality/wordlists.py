"""Word and phrase lists per language (shipped in `data/`, extendable by a user file) and where a
transcript's words match them.

A list file holds one entry a line, `LANGUAGE<TAB>ENTRY` (ISO 639 code, then a word or a phrase);
blank lines and lines starting with `#` are skipped. An entry matches whole words of the transcript,
case-folded, split as the transcript is (`split_words`: "Amara.org" is one word, "amaraorg"); a final
`*` lets its last word match any word it begins ("fuck*": "fucking"). In languages written without
spaces (zh, yue, ja) an entry matches the characters of consecutive words, starting and ending on a
word boundary, however the splitter cut it.
"""

import bisect
import functools
import os
import re
from pathlib import Path

from sylm_data import languages
from sylm_data.align.split import split_words
from sylm_data.quality.words import UNSPACED

DATA_DIR = Path(__file__).parent / "data"
_GAP = "\x00"  # joins a transcript's words for matching; split_words never keeps it


def read_list(path: str | os.PathLike) -> dict[str, list[str]]:
    """A list file's entries by language (normalised code)."""
    entries: dict[str, list[str]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        code, _, entry = line.partition("\t")
        language = languages.normalize(code)
        if language is None or not entry.strip():
            raise ValueError(f"{path}:{number}: expected 'LANGUAGE<TAB>ENTRY' with an ISO 639 code, got {line!r}")
        entries.setdefault(language, []).append(entry.strip())
    return entries


@functools.lru_cache(maxsize=64)
def matcher(name: str, language: str, extra: str | os.PathLike | None = None) -> re.Pattern | None:
    """The shipped list `data/{name}.tsv` plus the user file `extra`, for `language`, as one pattern
    over `joined` words; None when neither has an entry for it."""
    entries = read_list(DATA_DIR / f"{name}.tsv").get(language, [])
    if extra is not None:
        entries = entries + read_list(extra).get(language, [])
    bodies = {_entry_pattern(entry, language) for entry in entries}
    bodies.discard("")
    if not bodies:
        return None
    alternatives = "|".join(sorted(bodies, key=lambda body: (-len(body), body)))
    return re.compile(f"(?:^|(?<={_GAP}))(?:{alternatives})(?={_GAP}|$)")


def _entry_pattern(entry: str, language: str) -> str:
    prefix = entry.endswith("*")
    words = [word.casefold() for word in split_words(entry.rstrip("*"), language)]
    if not words:
        return ""
    if language in UNSPACED:
        body = f"{_GAP}?".join(re.escape(char) for char in "".join(words))
    else:
        body = _GAP.join(map(re.escape, words))
    return body + (f"[^{_GAP}]*" if prefix else "")


def covered(words: list[str], pattern: re.Pattern | None) -> int:
    """How many of `words` (case-folded) lie inside a match of `pattern`."""
    if pattern is None or not words:
        return 0
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    count = 0
    for match in pattern.finditer(_GAP.join(words)):
        count += bisect.bisect_left(starts, match.end()) - bisect.bisect_left(starts, match.start())
    return count
