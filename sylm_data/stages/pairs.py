"""pairs: `tokenized` rows -> (text, units) pairs that train the text-to-token model.

Each utterance is cut into chunks exactly as interleave cuts it (word or sentence granularity);
runs of chunks of Poisson(`span_mean`) words (or sentences) become spans, and each span becomes
a text segment followed by the speech segment that says it: one `pairs` sample per utterance. A
`heldout_share` of the utterances (chosen by id) go to DIR/pairs-heldout/ for
`sylm-data eval t2t`; the rest to DIR/pairs-shards/ for `sylm-data train --task t2t`.
"""

import functools
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.pipeline.stage import Stage, StageConfigError
from sylm_data.schemas import sample
from sylm_data.stages import interleave, spans

NAME = "pairs"


@dataclass
class PairsConfig:
    granularity: str = "word"  # word | sentence
    span_mean: float = 10.0  # Poisson mean of a span: words (word) or sentences (sentence)
    tolerance_ms: int = 10  # as interleave: where unit and word boundaries may meet
    seed: int = 0
    heldout_share: float = 0.02
    shard_bytes: int = 256 * 2**20


def preflight(config: PairsConfig) -> None:
    if config.granularity not in ("word", "sentence"):
        raise StageConfigError(f"granularity must be word or sentence, not {config.granularity!r}")
    if not 0 <= config.heldout_share < 1 or config.span_mean <= 0:
        raise StageConfigError("heldout_share must be within 0..1 (below 1) and span_mean above 0")


def plan_pairs(utterances: interleave.Utterances, rows: np.ndarray, config: PairsConfig) -> interleave.Plan:
    """Each utterance's chunks grouped into consecutive Poisson spans, each span a text segment
    followed by the speech segment that says it."""
    keys = spans.stream_keys(config.seed, [utterances.ids[row] for row in rows.tolist()])
    chunked = interleave.utterance_chunks(utterances, rows, config.granularity)
    span_of = spans.consecutive_spans(chunked.words, np.searchsorted(rows, chunked.rows), keys, config.span_mean,
                                      span_in_words=config.granularity == "word")
    grouped, _ = spans.runs(chunked, span_of)
    return interleave.Plan([sample.PAIRS] * len(rows), grouped.take(np.repeat(np.arange(len(grouped.rows)), 2)),
                           np.tile([False, True], len(grouped.rows)))


def heldout(sample_id: str, config: PairsConfig) -> bool:
    digest = hashlib.blake2b(f"{config.seed}:heldout:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < config.heldout_share


def write_shards(config: PairsConfig, folder: Path) -> dict:
    """DIR/pairs-shards/ and DIR/pairs-heldout/, each with the bound on units per word."""
    table, vocabulary = interleave.committed_samples(folder)
    ratio = pc.divide(pc.cast(table[sample.ROW_UNITS], pa.float64()), pc.cast(table[sample.ROW_WORDS], pa.float64()))
    described = vocabulary | {"config_hash": interleave.config_digest(config),
                              sample.INDEX_MAX_UNITS_PER_WORD: round(pc.max(ratio).as_py(), 3)}
    held = pa.array([heldout(key, config) for key in table[sample.ROW_KEY].to_pylist()], pa.bool_())
    summary = {}
    for name, rows in (("pairs-shards", table.filter(pc.invert(held))), ("pairs-heldout", table.filter(held))):
        if rows.num_rows:
            summary[name] = interleave.shard_samples(rows, folder.parent / name, config.shard_bytes, described)["total_samples"]
        else:  # none this time: an older run's folder must not stay behind
            shutil.rmtree(folder.parent / name, ignore_errors=True)
    return summary


STAGE = Stage(
    name=NAME,
    consumes="tokenize",
    contract=sample.ROW_SCHEMA,
    description="tokenized rows -> (text, units) pairs -> DIR/pairs-shards/ + DIR/pairs-heldout/ (text-to-token training)",
    config_type=PairsConfig,
    make_transform=lambda config: functools.partial(interleave.transform, config=config, plan=plan_pairs),
    preflight=preflight,
    finalize=write_shards,
)
