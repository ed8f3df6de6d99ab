"""All label-quality checks of one transcript: the `label_scores` column of an utterance, and the
thresholds (`ingest.max_*`; None keeps the score without filtering) that turn a score into a reject."""

from collections.abc import Callable
from typing import NamedTuple

from sylm_data.quality import hallucination, inappropriate, language, restarts
from sylm_data.schemas import utterance
from sylm_data.schemas.reject import Reason


class Check(NamedTuple):
    score: str  # its field in `label_scores`
    threshold: str  # the ingest setting that bounds it
    reason: Reason
    measure: Callable[..., float]  # (text, language[, a user word-list file]) -> score
    word_list: str | None = None  # the name of the user list `measure` takes


CHECKS = (
    Check(utterance.LOOP_SHARE, "max_loop_share", Reason.HALLUCINATION_LOOP, hallucination.loop_share),
    Check(utterance.BOILERPLATE_SHARE, "max_boilerplate_share", Reason.BOILERPLATE_PHRASE, hallucination.boilerplate_share,
          "boilerplate"),
    Check(utterance.LANGUAGE_MISMATCH, "max_language_mismatch", Reason.LANGUAGE_MISMATCH, language.language_mismatch),
    Check(utterance.CODE_SWITCH_SHARE, "max_code_switch_share", Reason.CODE_SWITCHING, language.code_switch_share),
    Check(utterance.INAPPROPRIATE_SHARE, "max_inappropriate_share", Reason.INAPPROPRIATE_WORDS,
          inappropriate.inappropriate_share, "inappropriate"),
    Check(utterance.RESTART_RATE, "max_restart_rate", Reason.RESTARTS, restarts.restart_rate),
)


def label_scores(text: str, language_code: str, lists: dict[str, str | None]) -> dict[str, float]:
    """Every check's score of a transcript; `lists`: user word-list files by name (boilerplate,
    inappropriate), added to the shipped lists."""
    scores = {}
    for check in CHECKS:
        user_list = (lists.get(check.word_list),) if check.word_list else ()
        scores[check.score] = round(float(check.measure(text, language_code, *user_list)), 4)
    return scores


def first_over(scores: dict[str, float], thresholds: dict[str, float | None]) -> tuple[Reason, str] | None:
    """(reason, detail) of the first check whose score is over its threshold, or None."""
    for check in CHECKS:
        limit = thresholds[check.threshold]
        if limit is not None and scores[check.score] > limit:
            return check.reason, f"{check.score} {scores[check.score]:.2f} > {limit}"
    return None
