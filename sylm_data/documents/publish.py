"""Sample rows (DIR/<stage>/, `schemas/sample.py`) into WebDataset shard folders: each committed
partition's rows in key order, written by a worker, with the index and the dataset card
(`pipeline.shards.publish`). Shared by every stage that writes samples."""

import functools
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.pipeline import shards
from sylm_data.pipeline.output import OutputLayout, read_rows, sorted_rows
from sylm_data.pipeline.stage import StageConfigError
from sylm_data.schemas import sample, tokenized


def check_shard_options(config) -> None:
    """The shard-writing options every sample stage's config has."""
    if config.shard_bytes <= 0 or config.min_shards < 1:
        raise StageConfigError(f"shard_bytes must be above 0 and min_shards at least 1, got {config.shard_bytes} "
                               f"and {config.min_shards}")


def _ratio(stats: dict) -> dict:
    words = stats.get("interleaved_words", 0)
    return {"speech_text_ratio": round(stats.get("interleaved_speech_words", 0) / words, 4) if words else None}


def config_digest(config) -> str:
    return hashlib.sha256(repr(sorted(vars(config).items())).encode()).hexdigest()[:16]


def partition_samples(folder: Path, partition: str) -> pa.Table:
    """One committed partition's sample rows, in key order."""
    table = read_rows(folder / partition) if (folder / partition).exists() else pa.table({})
    return sorted_rows(table, [(sample.ROW_KEY, "ascending")]) if table.num_rows else sample.ROW_SCHEMA.empty_table()


def sample_vocabulary(table: pa.Table) -> dict:
    """The unit tokenizer the rows name, and its vocabulary size; rows of two tokenizers are refused."""
    if not table.num_rows:
        return {}
    tokenizers = pc.unique(table[sample.ROW_TOKENIZER]).to_pylist()
    if len(tokenizers) != 1:
        raise ValueError(f"samples of {len(tokenizers)} tokenizers ({', '.join(sorted(tokenizers)[:3])}): "
                         "their unit ids mean different things; tokenize all partitions with one codebook")
    return {sample.INDEX_TOKENIZER: tokenizers[0], sample.INDEX_UNIT_VOCAB: tokenized.unit_vocabulary(tokenizers[0])}


def sample_stats(table: pa.Table):
    """`ShardWriter`'s `shard_stats` for the table's rows, in its order: each kind's samples, the
    words and units, and for interleaved samples their words, speech words and a histogram of
    their speech shares in tenths."""
    kinds = table[sample.ROW_KIND].to_numpy(zero_copy_only=False).astype(str)
    words, speech_words, units = (table[name].to_numpy(zero_copy_only=False).astype(np.int64)
                                  for name in (sample.ROW_WORDS, sample.ROW_SPEECH_WORDS, sample.ROW_UNITS))
    tenths = np.where(words > 0, np.minimum(10 * speech_words // np.maximum(words, 1), 9), 0)

    def stats(first: int, end: int) -> dict:
        held = kinds[first:end]
        summed = {f"{kind}_samples": int(count) for kind, count in zip(*np.unique(held, return_counts=True))}
        summed |= {"words": int(words[first:end].sum()), "units": int(units[first:end].sum())}
        mixed = first + np.flatnonzero(held == "interleaved")
        if len(mixed):
            shares = np.bincount(tenths[mixed], minlength=10)
            summed |= {"interleaved_words": int(words[mixed].sum()), "interleaved_speech_words": int(speech_words[mixed].sum()),
                       "speech_share_histogram": {f"{tenth / 10:.1f}-{(tenth + 1) / 10:.1f}": int(shares[tenth])
                                                  for tenth in np.flatnonzero(shares).tolist()}}
        return summed

    return stats


def kept_samples(folder: Path, partition: str, keep=None) -> pa.Table:
    """One committed partition's sample rows that `keep(table)` selects (all without it), in key order."""
    table = partition_samples(folder, partition)
    return table.filter(keep(table)) if keep is not None and table.num_rows else table


def write_sample_shards(table: pa.Table, target: Path, partition: str, shard_bytes: int, stamp: dict,
                        describe=sample_vocabulary) -> dict:
    """Sample rows, in key order, into `target` as partition `partition`'s shards and manifest."""
    return shards.write_partition(target, partition, table[sample.ROW_KEY], {"json": table[sample.ROW_JSON]}, shard_bytes, stamp,
                                  describe(table), _ratio, max_samples=stamp.get(SAMPLES_PER_SHARD), shard_stats=sample_stats(table))


def write_partition_shards(folder: Path, target: Path, shard_bytes: int, item: tuple[str, dict], keep=None,
                           describe=sample_vocabulary) -> dict:
    """On a worker: one partition's sample rows (those `keep(table)` selects) into `target`."""
    partition, stamp = item
    return write_sample_shards(kept_samples(folder, partition, keep), target, partition, shard_bytes, stamp, describe)


SAMPLES_PER_SHARD = "samples_per_shard"  # in a partition's stamp, when min_shards caps the shards


def partition_stamp(run_id: str, config_hash: str, samples_per_shard: int | None = None) -> dict:
    """What a partition's manifest records of the rows its shards were written from, and of the cap
    `min_shards` sets on samples per shard (`shards.samples_per_shard`; None: no cap)."""
    return {"run": run_id, "config": config_hash} | ({SAMPLES_PER_SHARD: samples_per_shard} if samples_per_shard else {})


def _kept_count(folder: Path, keep, partition: str) -> int:
    return kept_samples(folder, partition, keep).num_rows


def publish_samples(folder: Path, target: Path, shard_bytes: int, extra_index: dict, parallel, keep=None,
                    describe=sample_vocabulary, largest: tuple[str, ...] = (), min_shards: int = 1,
                    title: str = "sylm-data samples") -> dict:
    """The committed partitions of a sample-row stage into the shard folder `target`, with its
    dataset card (see `pipeline.shards.publish`): only partitions committed since the last
    publish are written, unless the cap `min_shards` sets on samples per shard has moved."""
    markers = OutputLayout(folder.parent).markers(folder.name)
    if not any(marker["rows_out"] for marker in markers.values()):
        raise ValueError(f"{folder} holds no samples: nothing to shard")
    cap = None
    if min_shards > 1:  # the folder's own sample count: a `keep` filter is counted on the workers
        counts = ([marker["rows_out"] for marker in markers.values()] if keep is None
                  else parallel(functools.partial(_kept_count, folder, keep), sorted(markers)))
        cap = shards.samples_per_shard(sum(counts), min_shards)
    stamps = {partition: partition_stamp(marker["run_id"], extra_index["config_hash"], cap) for partition, marker in markers.items()}
    write = functools.partial(write_partition_shards, folder, target, shard_bytes, keep=keep, describe=describe)
    return publish_stamped(target, stamps, write, parallel, extra_index, largest, title)


def publish_stamped(target: Path, stamps: dict[str, dict], write, parallel, extra_index: dict, largest: tuple[str, ...] = (),
                    title: str = "sylm-data samples") -> dict:
    """`pipeline.shards.publish` of sample shards: `write((partition, stamp))` writes a partition
    whose manifest lacks its stamp; then the index (its sample version and speech ratio) and card."""
    return shards.publish(target, stamps, write, parallel, extra_index | {sample.INDEX_VERSION: sample.VERSION},
                          derive=_ratio, largest=largest, card=functools.partial(sample.dataset_card, title=title))
