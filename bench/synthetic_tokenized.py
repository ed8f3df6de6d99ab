"""Synthetic committed `tokenize` partitions, built column-wise (no per-row Python objects).

Each utterance has 10-20 words of 160-320 ms with 0-80 ms gaps, on the 20 ms unit grid; each word
is one or two contiguous units (about 5 units/s), a gap belonging to the unit before it, so a unit
boundary meets every gap between words. The transcript is the words joined by spaces, with a period.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sylm_data.pipeline.output import DONE
from sylm_data.schemas import aligned, tokenized, utterance
from sylm_data.sources import Partition

FRAME_MS = 20
UNIT_VOCABULARY = 500
TOKENIZER = tokenized.tokenizer_id("mfcc", 0, UNIT_VOCABULARY, UNIT_VOCABULARY, "abc")
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
LEXICON = pa.array([a + b for a in _SYLLABLES for b in _SYLLABLES[::7]], pa.string())


def _offsets(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)])


def _lists(sizes: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(_offsets(sizes), pa.int32()), values)


def tokenized_table(partition: str, rows: int, seed: int) -> pa.Table:
    """`rows` utterances of the `tokenized` contract, ids `synthetic:<partition>-<n>`."""
    rng = np.random.default_rng(seed)
    word_counts = rng.integers(10, 21, rows)
    words = int(word_counts.sum())
    word_bounds = _offsets(word_counts)
    firsts = word_bounds[:-1]
    frames, gaps = rng.integers(8, 17, words), rng.integers(0, 5, words)
    gaps[firsts] = rng.integers(0, 11, rows)  # leading silence
    elapsed = np.cumsum(gaps + frames)
    row_base = np.repeat(elapsed[firsts] - (gaps + frames)[firsts], word_counts)
    word_ends = (elapsed - row_base) * FRAME_MS
    word_starts = word_ends - frames * FRAME_MS
    lasts = word_bounds[1:] - 1
    next_starts = np.append(word_starts[1:], 0)
    next_starts[lasts] = word_ends[lasts]  # the last unit of an utterance ends with its last word

    syllables = rng.integers(1, 3, words)
    unit_word = np.repeat(np.arange(words), syllables)
    second = np.arange(len(unit_word)) - np.repeat(_offsets(syllables)[:-1], syllables)
    middle = word_starts + frames // 2 * FRAME_MS
    unit_starts = np.where(second == 1, middle[unit_word], word_starts[unit_word])
    unit_ends = np.where(second == syllables[unit_word] - 1, next_starts[unit_word], middle[unit_word])
    unit_counts = np.add.reduceat(syllables, firsts)
    units = rng.integers(0, UNIT_VOCABULARY, len(unit_word)).astype(np.int32)

    word_texts = LEXICON.take(pa.array(rng.integers(0, len(LEXICON), words)))
    texts = pc.binary_join_element_wise(pc.binary_join(_lists(word_counts, word_texts), " "), ".", "")
    ids = pc.binary_join_element_wise(f"synthetic:{partition}-", pc.cast(pa.array(np.arange(rows)), pa.string()), "")
    word_structs = pa.StructArray.from_arrays([word_texts, pa.array(word_starts), pa.array(word_ends)],
                                              fields=list(aligned.WORD))

    def constant(value, type_):
        return pa.array(np.full(rows, value), type_)

    columns = {
        utterance.ID: ids,
        utterance.SOURCE: constant("synthetic", pa.string()),
        utterance.AUDIO_FORMAT: constant("flac", pa.string()),
        utterance.SAMPLE_RATE: constant(16_000, pa.int32()),
        utterance.DURATION_MS: pa.array(word_ends[lasts] + FRAME_MS * rng.integers(0, 11, rows)),
        utterance.TEXT: texts,
        utterance.LANGUAGE: constant("en", pa.string()),
        utterance.SPEAKER: pa.nulls(rows, pa.string()),
        utterance.QUALITY: pa.nulls(rows, pa.float32()),
        utterance.RECORDING: pa.nulls(rows, pa.string()),
        utterance.RECORDING_START_MS: pa.nulls(rows, pa.int64()),
        utterance.SEGMENT_INDEX: pa.nulls(rows, pa.int64()),
        utterance.LABEL_SCORES: pa.nulls(rows, tokenized.SCHEMA.field(utterance.LABEL_SCORES).type),
        utterance.META: pa.nulls(rows, pa.string()),
        aligned.WORDS: _lists(word_counts, word_structs),
        aligned.ALIGNER: constant("synthetic", pa.string()),
        aligned.WORD_UNIT: constant("word", pa.string()),
        tokenized.UNITS: _lists(unit_counts, pa.array(units)),
        tokenized.UNIT_START_MS: _lists(unit_counts, pa.array(unit_starts)),
        tokenized.UNIT_END_MS: _lists(unit_counts, pa.array(unit_ends)),
        tokenized.TOKENIZER: constant(TOKENIZER, pa.string()),
    }
    return pa.table(columns).cast(tokenized.SCHEMA)


def commit_partition(folder: Path, partition: str, rows: int, seed: int, config_hash: str, run_id: str) -> None:
    """A partition of `rows` utterances as the runner commits one: its Parquet, then its marker."""
    table = tokenized_table(partition, rows, seed)
    (folder / partition).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / partition / "rows.parquet")
    marker = {
        "partition": dataclasses.asdict(Partition(partition, "synthetic", str(folder / partition))),
        "rows_in": rows,
        "rows_out": rows,
        "audio_ms": int(pc.sum(table[utterance.DURATION_MS]).as_py()),
        "rejected": {},
        "config_hash": config_hash,
        "run_id": run_id,
    }
    (folder / DONE).mkdir(exist_ok=True)
    (folder / DONE / f"{partition}.json").write_text(json.dumps(marker, indent=1, sort_keys=True))
