"""Transcript against audio: scores of a forced alignment, computed by the align stage and kept in
`label_scores` beside the transcript's own; `BOUNDS` names the align settings (`align.max_*`,
`align.min_*`; None keeps the score without filtering) that turn one into a reject.

Every score takes the words' (start_ms, end_ms) in order; higher = worse, but for the speaking
rate, which is bounded on both sides. A score a backend cannot measure is None (pocketsphinx has
no posteriors, Qwen3 no phones).
"""

from typing import NamedTuple

import numpy as np

from sylm_data.align.words import voiced_frames
from sylm_data.schemas import utterance
from sylm_data.schemas.reject import Reason

Timings = list[tuple[int, int]]

# Letters and digits a second in ordinary speech (zh, yue: characters; ja: kana and kanji; ko:
# syllable blocks), estimates: en ~170 words a minute of ~4.5 letters (espeak-ng's voices at 150-175
# words a minute come out at 12-17), the others published syllable rates times letters a syllable.
# The bounds below are wide multiples of them.
TYPICAL_CHARS_PER_S = {
    "en": 13.0, "de": 14.0, "fr": 15.0, "es": 16.0, "it": 15.0, "pt": 14.0, "nl": 14.0, "ru": 13.0,
    "zh": 5.0, "yue": 5.0, "ja": 6.0, "ko": 6.0,
}
# matched transcripts of the espeak-ng fixture (`sylm-data eval quality`) lie at 0.92-1.31 of the
# typical rate, swapped ones that pocketsphinx still placed at 1.23-1.50: the rate cannot tell those
# apart, only gross misfits; the bounds leave room for real speakers' slow and fast speech
DEFAULT_MIN_SPEAKING_RATE = 0.35
DEFAULT_MAX_SPEAKING_RATE = 2.0
# pocketsphinx's HMMs need 3 frames a phone: on the fixture no matched English transcript has a word
# under 30 ms a phone or over 185 ms a phone; swapped ones reach 33% squeezed or 385 ms a phone
SQUEEZED_MS_PER_PHONE = 30
DEFAULT_MAX_SQUEEZED_WORD_SHARE = 0.15
DEFAULT_MAX_SLOWEST_MS_PER_PHONE = 300.0
PILE = 3  # words starting at one time: a pile, not a short word and its neighbour
# speech before the first word or after the last: the fixture's matched transcripts leave none of
# their voiced frames there, transcripts missing their second sentence 44-54%
UNTRANSCRIBED_MARGIN_MS = 200
DEFAULT_MAX_UNTRANSCRIBED_VOICE_SHARE = 0.3


def speaking_rate(words: list[str], timings: Timings, language: str) -> float | None:
    """Letters and digits of `words` a second of voiced audio (first word's start to last word's
    end), as a multiple of `language`'s typical rate (`TYPICAL_CHARS_PER_S`); None for a language
    without one, or words with no length in time."""
    typical = TYPICAL_CHARS_PER_S.get(language)
    voiced_ms = timings[-1][1] - timings[0][0] if timings else 0
    if typical is None or voiced_ms <= 0:
        return None
    characters = sum(char.isalnum() for word in words for char in word)
    return characters * 1000 / voiced_ms / typical


def squeezed_word_share(timings: Timings, phones: list[int], ms_per_phone: int = SQUEEZED_MS_PER_PHONE) -> float:
    """Share of words timed under `ms_per_phone` for each of their `phones`: squeezed below what an
    HMM aligner places over real speech."""
    return float(np.mean([end - start < ms_per_phone * count for (start, end), count in zip(timings, phones)]))


def slowest_ms_per_phone(timings: Timings, phones: list[int]) -> float:
    """The most ms a phone of any one word: a word stretched over sounds that are not its own."""
    return float(max((end - start) / count for (start, end), count in zip(timings, phones)))


def timestamp_uncertainty(confidence: list[float]) -> float:
    """1 - the mean posterior mass of the time bins a binned aligner chose (`confidence`: per word,
    the mean of its start and end markers' winning probabilities)."""
    return 1.0 - float(np.mean(confidence))


def one_bin_word_share(timings: Timings, bin_ms: int) -> float:
    """Share of words timed within one time bin (0 to `bin_ms`): words the aligner had no time for."""
    return float(np.mean([end - start <= bin_ms for start, end in timings]))


def piled_word_share(timings: Timings, pile: int = PILE) -> float:
    """Share of words in a pile: `pile` or more words in a row starting at the same time."""
    starts = np.array([start for start, _ in timings])
    inside = np.zeros(starts.size, dtype=bool)
    edges = np.flatnonzero(np.diff(starts, prepend=starts[0] - 1, append=starts[-1] + 1))
    for first, end in zip(edges, edges[1:]):
        if end - first >= pile:
            inside[first:end] = True
    return float(inside.mean())


def inner_silence_share(timings: Timings) -> float:
    """Share of the voiced span (first word's start to last word's end) that no word covers."""
    voiced_ms = timings[-1][1] - timings[0][0]
    if voiced_ms <= 0:
        return 0.0
    covered_ms, reached = 0, timings[0][0]
    for start, end in timings:
        covered_ms += max(end - max(start, reached), 0)
        reached = max(reached, end)
    return 1.0 - covered_ms / voiced_ms


def untranscribed_voice_share(samples: np.ndarray, timings: Timings, margin_ms: int = UNTRANSCRIBED_MARGIN_MS,
                              frame_ms: int = 20) -> float:
    """Share of the voiced frames of `samples` (16 kHz; `align.words.voiced_frames`) that lie more
    than `margin_ms` before the first word or after the last: speech the transcript leaves out.
    0.0 when no frame is voiced."""
    voiced = voiced_frames(samples, frame_ms)
    if not voiced.any():
        return 0.0
    middles_ms = np.arange(voiced.size) * frame_ms + frame_ms // 2
    outside = (middles_ms < timings[0][0] - margin_ms) | (middles_ms > timings[-1][1] + margin_ms)
    return float((voiced & outside).sum() / voiced.sum())


def scores(words: list[str], timings: Timings, language: str, samples: np.ndarray, phones: list[int] | None = None,
           confidence: list[float] | None = None, bin_ms: int = 0) -> dict[str, float | None]:
    """Every alignment score of one utterance's words (`timings` on the clock of its 16 kHz
    `samples`); those the backend cannot measure are None: `phones` (phones a word, pocketsphinx)
    gives the phone-rate scores, `confidence` and `bin_ms` (a binned aligner's posteriors, Qwen3)
    the confidence ones."""
    found = {
        utterance.SPEAKING_RATE: speaking_rate(words, timings, language),
        utterance.UNTRANSCRIBED_VOICE_SHARE: untranscribed_voice_share(samples, timings),
        utterance.PILED_WORD_SHARE: piled_word_share(timings),
        utterance.INNER_SILENCE_SHARE: inner_silence_share(timings),
        utterance.SQUEEZED_WORD_SHARE: squeezed_word_share(timings, phones) if phones else None,
        utterance.SLOWEST_MS_PER_PHONE: slowest_ms_per_phone(timings, phones) if phones else None,
        utterance.TIMESTAMP_UNCERTAINTY: timestamp_uncertainty(confidence) if confidence else None,
        utterance.ONE_BIN_WORD_SHARE: one_bin_word_share(timings, bin_ms) if bin_ms else None,
    }
    return {name: None if value is None else round(value, 4) for name, value in found.items()}


class Bound(NamedTuple):
    score: str  # its field in `label_scores`
    threshold: str  # the align setting that bounds it
    reason: Reason
    below: bool = False  # a min_ bound: a score under it is the reject


BOUNDS = (
    Bound(utterance.SPEAKING_RATE, "min_speaking_rate", Reason.SPEAKING_RATE, below=True),
    Bound(utterance.SPEAKING_RATE, "max_speaking_rate", Reason.SPEAKING_RATE),
    Bound(utterance.UNTRANSCRIBED_VOICE_SHARE, "max_untranscribed_voice_share", Reason.UNTRANSCRIBED_SPEECH),
    # pocketsphinx's phone-rate guard, once a hard reject: its reason stays align_failed
    Bound(utterance.SQUEEZED_WORD_SHARE, "max_squeezed_word_share", Reason.ALIGN_FAILED),
    Bound(utterance.SLOWEST_MS_PER_PHONE, "max_slowest_ms_per_phone", Reason.ALIGN_FAILED),
    Bound(utterance.TIMESTAMP_UNCERTAINTY, "max_timestamp_uncertainty", Reason.LOW_ALIGNMENT_CONFIDENCE),
    Bound(utterance.ONE_BIN_WORD_SHARE, "max_one_bin_word_share", Reason.LOW_ALIGNMENT_CONFIDENCE),
    Bound(utterance.PILED_WORD_SHARE, "max_piled_word_share", Reason.LOW_ALIGNMENT_CONFIDENCE),
    Bound(utterance.INNER_SILENCE_SHARE, "max_inner_silence_share", Reason.LOW_ALIGNMENT_CONFIDENCE),
)


def first_out_of_bounds(found: dict[str, float | None], thresholds: dict[str, float | None]) -> tuple[Reason, str] | None:
    """(reason, detail) of the first measured score beyond its bound, or None."""
    for bound in BOUNDS:
        limit, value = thresholds[bound.threshold], found[bound.score]
        if limit is None or value is None:
            continue
        if value < limit if bound.below else value > limit:
            side = "<" if bound.below else ">"
            return bound.reason, f"{bound.score} {value:.2f} {side} {limit} (transcript may not match the audio)"
    return None
