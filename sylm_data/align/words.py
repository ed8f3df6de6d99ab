"""Pure pieces of alignment: transcript words, cutting long audio, and checking what an aligner says.

No model here: every function takes numbers and strings and is tested on its own.
"""

import bisect
import itertools
import unicodedata
from dataclasses import dataclass

import numpy as np

from sylm_data.languages import punctuated_ends

SAMPLE_RATE = 16_000


@dataclass
class Piece:
    """A stretch of one utterance's audio with the transcript words it is given to align."""

    samples: np.ndarray  # float32, 16 kHz
    words: list[str]
    language: str
    offset_ms: int


@dataclass
class AlignedPiece:
    """What a backend says of one piece: (start_ms, end_ms) per word, relative to the piece, and
    per word what it knows of its own fit (None where it has no such measure)."""

    timings: list[tuple[int, int]]
    phones: list[int] | None = None  # phones a word (pocketsphinx's dictionary)
    confidence: list[float] | None = None  # mean posterior of the word's two chosen time bins (qwen3)


class AlignmentRejected(Exception):
    pass


def _is_cjk(char: str) -> bool:
    name = unicodedata.name(char, "")
    return name.startswith(("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA"))


def transcript_words(text: str, language: str) -> list[str]:
    """The units an aligner times: CJK characters one by one, other scripts by whitespace words;
    punctuation is dropped, apostrophes and hyphens inside a word stay."""
    words: list[str] = []
    for token in text.split():
        current = ""
        for char in token:
            if _is_cjk(char):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            elif unicodedata.category(char)[0] in "LNM" or (char in "'’-" and current):
                current += char
        current = current.rstrip("'’-")
        if current:
            words.append(current)
    return words


def cut_points(samples: np.ndarray, max_piece_ms: int, search_ms: int = 20_000, frame_ms: int = 20) -> list[int]:
    """Sample indices where to cut audio longer than `max_piece_ms`: at the quietest 20 ms frame in the
    last `search_ms` before each limit, so pieces end in pauses and each stays within the limit."""
    rate_per_ms = SAMPLE_RATE // 1000
    frame = frame_ms * rate_per_ms
    limit = max_piece_ms * rate_per_ms
    cuts, start = [], 0
    while len(samples) - start > limit:
        window_start = start + max(limit - search_ms * rate_per_ms, limit // 2)
        window = samples[window_start : start + limit]
        frames = len(window) // frame
        energy = (window[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
        quietest = frames - 1 - int(np.argmin(energy[::-1]))  # the latest of equally quiet frames: fewer pieces
        cut = window_start + quietest * frame + frame // 2
        cuts.append(cut)
        start = cut
    return cuts


def voiced_frames(samples: np.ndarray, frame_ms: int = 20) -> np.ndarray:
    """Per whole `frame_ms` frame of 16 kHz `samples`: whether it carries speech (energy above a
    tenth of the median of the louder half of the frames)."""
    frame = frame_ms * SAMPLE_RATE // 1000
    frames = len(samples) // frame
    energy = (samples[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
    if not frames:
        return np.zeros(0, dtype=bool)
    loud = np.median(np.sort(energy)[frames // 2 :])
    return energy > loud / 10


def speech_amounts(samples: np.ndarray, bounds: list[int], frame_ms: int = 20) -> list[int]:
    """Frames that carry speech (`voiced_frames`) between bounds, at least 1 each."""
    frame = frame_ms * SAMPLE_RATE // 1000
    voiced = voiced_frames(samples, frame_ms)
    if not voiced.size:
        return [1] * (len(bounds) - 1)
    return [max(int(voiced[start // frame : end // frame].sum()), 1) for start, end in zip(bounds, bounds[1:])]


_CLAUSE_MARKS = set(".,;:!?…。，、！？；：")


def clause_ends(text: str, words: list[str]) -> set[int]:
    """Word counts after which the text has punctuation: where speakers tend to pause."""
    return punctuated_ends(text, words, _CLAUSE_MARKS)


def share_words(words: list[str], piece_lengths: list[int], breaks: set[int] = frozenset(), snap: int = 8) -> list[list[str]]:
    """Give each piece the words whose middle falls in its share of the speech, by character count,
    moving each boundary to the nearest clause end (`breaks`) within `snap` words.

    Cuts are made in pauses and pauses tend to follow punctuation; a share gone wrong anyway is
    caught by the checks on the aligner's output."""
    sizes = [len(word) + 1 for word in words]
    scale = sum(sizes) / sum(piece_lengths)
    bounds = list(itertools.accumulate(length * scale for length in piece_lengths))
    middles = list(itertools.accumulate(sizes))
    counts = [bisect.bisect_left([m - size / 2 for m, size in zip(middles, sizes)], bound) for bound in bounds[:-1]]
    snapped, previous = [], 0
    for count in counts:
        near = [b for b in breaks if abs(b - count) <= snap and b >= previous]
        count = max(min(near, key=lambda b: (abs(b - count), b)) if near else count, previous)
        snapped.append(count)
        previous = count
    edges = [0, *snapped, len(words)]
    return [words[start:end] for start, end in zip(edges, edges[1:])]


def check_and_repair(timings: list[tuple[int, int]], duration_ms: int, max_word_ms: int,
                     slack_ms: int = 200) -> list[tuple[int, int]]:
    """Guard an aligner's word timings; raise AlignmentRejected when they cannot be trusted.

    Repairs what is repairable: starts made non-decreasing, each end at least its start, times
    clamped into the audio. Rejects: no words, all times equal (the classic failure: all zero),
    words placed beyond the audio, a word longer than `max_word_ms` (a mismatched transcript
    piles its leftovers onto one word)."""
    if not timings:
        raise AlignmentRejected("no words were timed")
    points = {time for pair in timings for time in pair}
    if len(points) == 1 and len(timings) > 1:
        raise AlignmentRejected(f"every timestamp is {points.pop()} ms")
    if max(start for start, _ in timings) > duration_ms + slack_ms:
        raise AlignmentRejected(f"words start after the audio ends ({duration_ms} ms)")
    repaired, latest = [], 0
    for start, end in timings:
        start = min(max(start, latest, 0), duration_ms)
        end = min(max(end, start), duration_ms)
        repaired.append((start, end))
        latest = start
    longest = max(end - start for start, end in repaired)
    if longest > max_word_ms:
        raise AlignmentRejected(f"a word lasts {longest} ms (transcript may not match the audio)")
    return repaired


def edge_pileup(timings: list[tuple[int, int]], piece_ms: int, bin_ms: int, most: int = 2) -> str | None:
    """Why a piece's timings cannot be trusted when more than `most` words lie wholly in its first
    or last time bin, else None. A binned aligner squeezes the words it cannot place (words given
    to the wrong side of a cut, a transcript longer than the audio) into the piece's edges."""
    first = sum(1 for _, end in timings if end <= bin_ms)
    last = sum(1 for start, _ in timings if start >= piece_ms - bin_ms)
    for count, edge in ((first, "first"), (last, "last")):
        if count > most:
            return f"{count} words piled up in the {edge} {bin_ms} ms of a {piece_ms} ms piece"
    return None
