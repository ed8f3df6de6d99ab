"""Ids that occur in more than one partition: every occurrence but the first is a `duplicate_id` reject.

Before a run reads its sources, a worker lists each pending partition's sample ids (the reader's
own records, so exactly the ids it will emit) into DIR/_ids/<partition>.parquet, with a hash
bucket per id. One task per bucket then reads that bucket of every partition's list and names the
repeated occurrences; only those (rare, small) come back to the driver, which hands each partition
its own list to reject while it is read. The first occurrence is the one in a partition committed
by an earlier run, else the one in the partition whose id sorts first, so a clean run and a resumed
one agree, and a partition added later never duplicates what is already out.
"""

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BUCKETS = 16
ID, BUCKET = "id", "bucket"
IDS_SCHEMA = pa.schema([pa.field(ID, pa.string(), nullable=False), pa.field(BUCKET, pa.int16(), nullable=False)])


def ids_file(ids_dir: Path, partition: str) -> Path:
    return ids_dir / f"{partition}.parquet"


def write_ids(ids: list[str], path: Path) -> None:
    """A partition's distinct ids by bucket (atomically: a listing killed half way leaves nothing)."""
    distinct = sorted(set(ids))
    buckets = [zlib.crc32(sample_id.encode()) % BUCKETS for sample_id in distinct]
    table = pa.table({ID: distinct, BUCKET: pa.array(buckets, pa.int16())}, schema=IDS_SCHEMA).sort_by(BUCKET)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)


def repeats_in_bucket(bucket: int, ids_dir: str, partitions: list[str], committed: list[str]) -> list[dict]:
    """The occurrences to reject among `partitions` for the ids of one bucket: {partition, id, first}."""
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
    found = []
    for sample_id, holding in sorted(holders.items()):
        first, *later = sorted(holding, key=lambda partition: (partition not in done, partition))
        found.extend({"partition": partition, "id": sample_id, "first": first} for partition in later)
    return found


def by_partition(found: list[dict]) -> dict[str, str]:
    """Per partition, a JSON object {id: partition holding its first occurrence}."""
    grouped: dict[str, dict[str, str]] = {}
    for repeat in found:
        grouped.setdefault(repeat["partition"], {})[repeat["id"]] = repeat["first"]
    return {partition: json.dumps(ids, sort_keys=True) for partition, ids in grouped.items()}
