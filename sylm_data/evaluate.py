"""`sylm-data eval align`: word start times against reference onsets.

Reference: JSONL of {"id", "words": [{"start_ms", ["index"], ["text"]}]}; `index` is the word's
position in the transcript (espeak-ng's references skip words it spoke as one unit), otherwise
reference words are taken in order. Ids match whole or after the source prefix (`manifest:ID`).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sylm_data.pipeline.output import read_rows
from sylm_data.schemas import aligned


@dataclass
class AlignmentScore:
    utterances: int  # aligned utterances that have a reference
    words: int
    median_ms: float
    p90_ms: float
    within_50ms: float
    within_100ms: float
    missing: int  # reference utterances with no aligned row (rejected or absent)

    def lines(self) -> list[str]:
        return [
            f"utterances: {self.utterances} aligned, {self.missing} of the reference not aligned",
            f"word start error over {self.words} words: median {self.median_ms:.1f} ms, p90 {self.p90_ms:.1f} ms",
            f"within 50 ms: {self.within_50ms:.1%}   within 100 ms: {self.within_100ms:.1%}",
        ]


def load_reference(path: Path) -> dict[str, list[dict]]:
    return {row["id"]: row["words"] for row in map(json.loads, Path(path).read_text().splitlines()) if row}


def score(rows: list[dict], reference: dict[str, list[dict]]) -> AlignmentScore:
    """`rows`: aligned rows (id, words) — Parquet rows or in-flight dicts."""
    errors, seen = [], set()
    for row in rows:
        key = row["id"] if row["id"] in reference else row["id"].split(":", 1)[-1]
        if key not in reference or not row.get(aligned.WORDS):
            continue
        seen.add(key)
        words = row[aligned.WORDS]
        for position, expected in enumerate(reference[key]):
            index = expected.get("index", position)
            if index < len(words):
                errors.append(abs(words[index][aligned.WORD_START_MS] - expected["start_ms"]))
    if not errors:
        raise ValueError("no aligned utterance matches the reference ids")
    errors = np.array(errors)
    return AlignmentScore(
        utterances=len(seen), words=len(errors), median_ms=float(np.median(errors)),
        p90_ms=float(np.percentile(errors, 90)), within_50ms=float(np.mean(errors <= 50)),
        within_100ms=float(np.mean(errors <= 100)), missing=len(set(reference) - seen),
    )


def score_folder(folder: Path, reference_path: Path) -> AlignmentScore:
    rows = read_rows(folder, columns=["id", aligned.WORDS]).to_pylist()
    return score(rows, load_reference(reference_path))
