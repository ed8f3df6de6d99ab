"""Restarts and self-corrections: "the the", "we wa- we want", "I went- I go"."""

import re
import unicodedata

from sylm_data.quality import hallucination
from sylm_data.quality.words import UNSPACED, language_of, spans

# more than one restart in five words: more broken start than sentence; one natural "no no" in a
# five-word utterance passes
DEFAULT_MAX_RATE = 0.2

MAX_RESTARTED = 3  # the longest stretch of words a speaker takes back and says again
_CUT_OFF = re.compile(r"\S*")


def restart_rate(text: str, language: str) -> float:
    """Restarts per word of `text`. A restart is where a speaker broke off:
    - a cut-off word: written with a dash right after it and a space or the end after the dash ("wa- ");
    - the last word before 1..`MAX_RESTARTED` words are said again ("the the", "I went I went"), or
      again with their last word completed ("we wa we want"). In zh, yue and ja a single character or
      morpheme said twice is grammar (看看), not a restart: one word is not enough there. Words inside a
      loop as `hallucination.loop_share` finds them ("thank you thank you thank you") are its to judge.
    Each word counts once, however many of these mark it. 0.0 without words."""
    language = language_of(language)
    located = spans(text, language)
    words = [word for word, _, _ in located]
    broken = {index for index, (_, _, end) in enumerate(located) if _is_cut_off(text, end)}
    shortest = 2 if language in UNSPACED else 1
    for index in range(len(words)):
        for size in range(shortest, MAX_RESTARTED + 1):
            first, again = words[index:index + size], words[index + size:index + 2 * size]
            if len(again) < size:
                break
            last, completed = first[-1], again[-1]
            said_again = first == again or (size > 1 and first[:-1] == again[:-1] and completed.startswith(last))
            if said_again and not (first == again and _in_loop(words, index, size)):
                broken.add(index + size - 1)
    return len(broken) / len(words) if words else 0.0


def _in_loop(words: list[str], index: int, size: int) -> bool:
    """Whether `words[index:index + 2 * size]`, a phrase said twice, lies in a loop: a stretch that
    repeats every `size` words for `hallucination.MIN_REPEATS` rounds and `MIN_LOOP_WORDS` words."""
    start, end = index, index + 2 * size
    while start > 0 and words[start - 1] == words[start - 1 + size]:
        start -= 1
    while end < len(words) and words[end] == words[end - size]:
        end += 1
    return end - start >= max(hallucination.MIN_REPEATS * size, hallucination.MIN_LOOP_WORDS)


def _is_cut_off(text: str, end: int) -> bool:
    """Whether the marks written right after a word (up to the next space) are or end in a dash."""
    marks = _CUT_OFF.match(text, end).group()
    return bool(marks) and unicodedata.category(marks[-1]) == "Pd"
