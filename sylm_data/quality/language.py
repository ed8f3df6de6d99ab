"""The declared language against the text: language ID (py3langid, whose model ships in its wheel) of
the whole transcript, and of its parts for code-switching."""

import functools

import numpy as np
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from sylm_data import languages
from sylm_data.quality.words import UNSPACED, language_of, spans

# P(declared) under 1%: no right label of 120 short (2-8 word) sentences fell that low, 97% of wrong ones did
DEFAULT_MAX_MISMATCH = 0.99
# a third of the words in another language: a bilingual or mislabelled transcript, not a loanword
DEFAULT_MAX_CODE_SWITCH_SHARE = 0.3

# languages the model cannot tell apart on short text, and whose transcripts mix them: one language here
_KIN = (frozenset({"zh", "yue", "wuu"}), frozenset({"no", "nb", "nn"}), frozenset({"sr", "hr", "bs"}),
        frozenset({"id", "ms"}))
_NO_LANGUAGE = "zxx"  # the model's class for numbers, markup and identifiers: evidence for no language


@functools.cache
def _identifier() -> LanguageIdentifier:
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@functools.cache
def _kin(language: str) -> frozenset[str] | None:
    """The model's labels that count as `language`; None when the model does not know it."""
    group = next((group for group in _KIN if language in group), frozenset({language}))
    known = group & set(_identifier().labels)
    return known or None


def declared_probability(text: str, language: str) -> float | None:
    """The model's probability that `text` is in `language` (or a language it cannot be told from,
    e.g. yue for zh), leaving its no-language class aside; None when the model does not know
    `language` or `text` has no letter."""
    kin = _kin(language_of(language))
    if kin is None or not any(char.isalpha() for char in text):
        return None
    probabilities = dict(_identifier().rank(text))
    rest = 1.0 - probabilities[_NO_LANGUAGE]
    return min(1.0, sum(probabilities[label] for label in kin) / rest) if rest > 1e-6 else None


def language_mismatch(text: str, language: str) -> float:
    """1 - the probability that `text` is in the declared `language` (`declared_probability`); 0.0
    where that is not known (a language the model lacks, a text without letters)."""
    probability = declared_probability(text, language)
    return 0.0 if probability is None else 1.0 - probability


def code_switch_share(text: str, language: str, *, min_run: int = 3, window: int = 4,
                      max_declared: float = 0.05) -> float:
    """Share of the words of `text` in another language than `language`. A word is, when
    - it lies in a run of at least `min_run` words written mostly in scripts `language` does not use
      (`languages.SCRIPTS`; languages not listed there are not checked this way), or
    - it lies in a stretch of `window` consecutive words (twice that in zh, yue and ja, whose words are
      characters or morphemes) in the language's scripts that language ID gives at most
      `max_declared` probability of being `language` (languages the model lacks are not checked).
    Short stretches only: a loanword or a name in another script is not a switch; a text shorter than
    `window` words is judged by script alone. 0.0 without words."""
    language = language_of(language)
    located = spans(text, language)
    if not located:
        return 0.0
    other_script = np.array([_mostly_foreign(word, language) for word, _, _ in located])
    foreign = _runs_at_least(other_script, min_run)
    if _kin(language) is not None:
        size = 2 * window if language in UNSPACED else window
        for first in range(len(located) - size + 1):
            if other_script[first:first + size].any():
                continue
            probability = declared_probability(text[located[first][1]:located[first + size - 1][2]], language)
            if probability is not None and probability <= max_declared:
                foreign[first:first + size] = True
    return float(foreign.mean())


def _mostly_foreign(word: str, language: str) -> bool:
    expected = languages.SCRIPTS.get(language)
    if expected is None:
        return False
    scripts = [found for found in map(languages.script, word) if found is not None]
    return sum(found not in expected for found in scripts) * 2 > len(scripts)


def _runs_at_least(flags: np.ndarray, length: int) -> np.ndarray:
    """`flags` with the runs of True shorter than `length` cleared."""
    kept = np.zeros_like(flags)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
    for start, end in zip(edges[::2], edges[1::2]):
        if end - start >= length:
            kept[start:end] = True
    return kept
