"""Ids that occur in more than one partition: every occurrence but the first is a `duplicate_id` reject.

Before a run reads its sources, a worker lists each pending partition's sample ids (the reader's
own records, so exactly the ids it will emit) into DIR/_ids/<partition>.parquet, with a hash
bucket per id. One task per bucket then reads that bucket of every partition's list and names the
repeated occurrences; only those (rare, small) come back to the driver, which hands each partition
its own list to reject while it is read. The first occurrence is the one in a partition committed
by an earlier run, else the one in the partition whose id sorts first, so a clean run and a resumed
one agree, and a partition added later never duplicates what is already out. An occurrence a
committed partition rejected as a repeat is never the first: a run killed after committing the
partition holding the repeat, before the one holding the first, must not lose the id.
"""

import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sylm_data.pipeline.output import write_parquet
from sylm_data.schemas import reject
from sylm_data.schemas.reject import Reason

BUCKETS = 16
ELSEWHERE = "the id occurs in partition "  # a `duplicate_id` reject's detail, then the first occurrence's partition
ID, BUCKET = "id", "bucket"
IDS_SCHEMA = pa.schema([pa.field(ID, pa.string(), nullable=False), pa.field(BUCKET, pa.int16(), nullable=False)])


def ids_file(ids_dir: Path, partition: str) -> Path:
    return ids_dir / f"{partition}.parquet"


def write_ids(ids: list[str], path: Path) -> None:
    """A partition's distinct ids by bucket (atomically: a listing killed half way leaves nothing)."""
    distinct = sorted(set(ids))
    buckets = [zlib.crc32(sample_id.encode()) % BUCKETS for sample_id in distinct]
    table = pa.table({ID: distinct, BUCKET: pa.array(buckets, pa.int16())}, schema=IDS_SCHEMA).sort_by(BUCKET)
    write_parquet(table, path)


def repeats_in_bucket(bucket: int, ids_dir: str, partitions: list[str], committed: list[str],
                      rejects_dir: str | None = None) -> list[dict]:
    """The occurrences to reject among `partitions` for the ids of one bucket: {partition, id, first}.
    `rejects_dir` (DIR/rejects/<reader stage>) holds the committed partitions' rejects."""
    held = []
    for holder, partition in enumerate(partitions):
        ids = pq.read_table(ids_file(Path(ids_dir), partition), columns=[ID], filters=[(BUCKET, "=", bucket)])[ID]
        held.append(pa.table({ID: ids, "holder": pa.array(np.full(len(ids), holder, np.int32))}))
    table = pa.concat_tables(held) if held else pa.table({ID: pa.array([], pa.string()), "holder": pa.array([], pa.int32())})
    counts = pc.value_counts(table[ID])
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    table = table.filter(pc.is_in(table[ID], value_set=repeated))
    done = set(committed)
    holders: dict[str, list[str]] = {}
    for sample_id, holder in zip(table[ID].to_pylist(), table["holder"].to_pylist()):
        holders.setdefault(sample_id, []).append(partitions[holder])
    holding_committed = {partition for held in holders.values() for partition in held if partition in done}
    repeated_in = {partition: rejected_ids(rejects_dir, partition, Reason.DUPLICATE_ID, ELSEWHERE)
                   for partition in holding_committed} if rejects_dir else {}
    found = []
    for sample_id, holding in sorted(holders.items()):
        candidates = [partition for partition in holding if sample_id not in repeated_in.get(partition, ())]
        if not candidates:
            continue
        first = min(candidates, key=lambda partition: (partition not in done, partition))
        found.extend({"partition": partition, "id": sample_id, "first": first}
                     for partition in holding if partition != first)
    return found


def rejected_ids(rejects_dir: str | Path | None, partition: str, reason: Reason, detail_prefix: str = "") -> set[str]:
    """The ids a committed partition rejected for `reason` (with a detail starting `detail_prefix`),
    from its rejects in `rejects_dir` (DIR/rejects/<stage>; none without one)."""
    folder = Path(rejects_dir) / partition if rejects_dir else None
    if folder is None or not folder.is_dir():
        return set()
    columns = [reject.ID, reject.DETAIL] if detail_prefix else [reject.ID]
    table = pq.read_table(folder, columns=columns, filters=[(reject.REASON, "=", reason.value)])
    if detail_prefix:
        table = table.filter(pc.starts_with(table[reject.DETAIL], detail_prefix))
    return set(table[reject.ID].to_pylist())


def by_partition(found: list[dict]) -> dict[str, str]:
    """Per partition, a JSON object {id: partition holding its first occurrence}."""
    grouped: dict[str, dict[str, str]] = {}
    for repeat in found:
        grouped.setdefault(repeat["partition"], {})[repeat["id"]] = repeat["first"]
    return {partition: json.dumps(ids, sort_keys=True) for partition, ids in grouped.items()}
