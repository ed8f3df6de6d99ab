"""pairs: `tokenized` rows -> (text, units) pairs that train the text-to-token model.

Each utterance is cut into chunks exactly as interleave cuts it (word or sentence granularity);
runs of chunks of Poisson(`span_mean`) words (or sentences) become spans, and each span becomes
a text segment followed by the speech segment that says it: one `pairs` sample per utterance. A
`heldout_share` of the utterances (chosen by id) go to DIR/pairs-heldout/ for
`sylm-data eval t2t`; the rest to DIR/pairs-shards/ for `sylm-data train --task t2t`.
"""

import functools
import hashlib
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.pipeline.stage import Stage, StageConfigError
from sylm_data.schemas import sample
from sylm_data.documents import publish, render, spans
from sylm_data.documents.utterances import Plan, Utterances, utterance_chunks

NAME = "pairs"


@dataclass
class PairsConfig:
    ROWS_VERSION: ClassVar[int] = 2  # 2: samples list their source_ids
    granularity: str = "word"  # word | sentence
    span_mean: float = 10.0  # Poisson mean of a span: words (word) or sentences (sentence)
    tolerance_ms: int = 10  # as interleave: where unit and word boundaries may meet
    seed: int = 0
    heldout_share: float = 0.02
    shard_bytes: int = 256 * 2**20
    min_shards: int = 1  # at least this many shards in each folder (samples allowing)


def preflight(config: PairsConfig) -> None:
    if config.granularity not in ("word", "sentence"):
        raise StageConfigError(f"granularity must be word or sentence, not {config.granularity!r}")
    if not 0 <= config.heldout_share < 1 or config.span_mean <= 0:
        raise StageConfigError("heldout_share must be within 0..1 (below 1) and span_mean above 0")
    publish.check_shard_options(config)


def plan_pairs(utterances: Utterances, rows: np.ndarray, config: PairsConfig) -> Plan:
    """Each utterance's chunks grouped into consecutive Poisson spans, each span a text segment
    followed by the speech segment that says it."""
    keys = spans.stream_keys(config.seed, utterances.ids.take(rows))
    chunked = utterance_chunks(utterances, rows)
    span_of = spans.consecutive_spans(chunked.words, np.searchsorted(rows, chunked.rows), keys, config.span_mean,
                                      span_in_words=config.granularity == "word")
    grouped, _ = spans.runs(chunked, span_of)
    return Plan([sample.PAIRS] * len(rows), grouped.take(np.repeat(np.arange(len(grouped.rows)), 2)),
                           np.tile([False, True], len(grouped.rows)))


def heldout(sample_id: str, config: PairsConfig) -> bool:
    digest = hashlib.blake2b(f"{config.seed}:heldout:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < config.heldout_share


def describe_pairs(table: pa.Table) -> dict:
    """The unit tokenizer, and the most units per word among the pairs: text-to-token generation keeps that bound."""
    if not table.num_rows:
        return {}
    ratio = pc.divide(pc.cast(table[sample.ROW_UNITS], pa.float64()), pc.cast(table[sample.ROW_WORDS], pa.float64()))
    return publish.sample_vocabulary(table) | {sample.INDEX_MAX_UNITS_PER_WORD: round(pc.max(ratio).as_py(), 3)}


def write_shards(config: PairsConfig, folder: Path, parallel) -> dict:
    """DIR/pairs-shards/ and DIR/pairs-heldout/, partition by partition, each with the bound on units per word."""
    def held(table: pa.Table) -> pa.Array:
        return pa.array([heldout(key, config) for key in table[sample.ROW_KEY].to_pylist()], pa.bool_())

    summary = {}
    for name, keep in (("pairs-shards", lambda table: pc.invert(held(table))), ("pairs-heldout", held)):
        index = publish.publish_samples(folder, folder.parent / name, config.shard_bytes,
                                           {"config_hash": publish.config_digest(config)}, parallel, keep=keep,
                                           describe=describe_pairs, largest=(sample.INDEX_MAX_UNITS_PER_WORD,),
                                           min_shards=config.min_shards, title=f"sylm-data text-to-token pairs: {name}")
        summary[name] = index["total_samples"]
    return summary


STAGE = Stage(
    name=NAME,
    consumes="tokenize",
    contract=sample.ROW_SCHEMA,
    description="tokenized rows -> (text, units) pairs -> DIR/pairs-shards/ + DIR/pairs-heldout/ (text-to-token training)",
    config_type=PairsConfig,
    make_transform=lambda config: functools.partial(render.build_samples, config=config, plan=plan_pairs, stage=NAME),
    preflight=preflight,
    finalize=write_shards,
    rows_per_call=render.ROWS_PER_CALL,
)
