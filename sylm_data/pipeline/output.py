"""The output folder: where each stage's rows and rejects go, and how a partition is committed.

    DIR/<stage>/<partition>/*.parquet          a stage's rows (contract in schemas/)
    DIR/<stage>/_done/<partition>.json         the partition's marker: it is complete, with counts
                                               (a run writes its final stage, and the stages it keeps)
    DIR/rejects/<stage>/<partition>/*.parquet  `reject` rows
    DIR/_ids/<partition>.parquet               a source partition's ids (`duplicates`)
    DIR/runs/<run-id>.json                     run records
    DIR/shards/                                WebDataset shards + index.json

Workers write each batch under `.tmp/<run-id>/<partition>/` (invisible to readers: pyarrow skips
dot folders), in a file named by the ids it holds, so a task Ray retries after its worker died
replaces its first attempt's file instead of adding a copy. When every input sample of a
partition has come out, the driver checks the staged row counts, renames the staged folders into
place and writes the markers, each step atomic: committed output is what the markers name. A stage
a fused run keeps (its first stage when that is ingest: the audio; any stage named by --keep) is
committed before the final stage, whose marker is the partition's commit point: a partition the
final stage has not committed is wiped, kept stages included, and recomputed on the next run, so a
run killed at any point resumes without duplicates or losses.
"""

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sylm_data.compiled import compiled
from sylm_data.schemas import stream

TMP = ".tmp"
DONE = "_done"


def read_rows(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """Every committed Parquet row under `folder` (staging, markers and other files left out)."""
    import pyarrow.dataset as ds  # it imports pandas: here, so that listing the stages stays quick

    files = sorted(
        str(path) for path in Path(folder).rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)
    )
    return ds.dataset(files, format="parquet").to_table(columns=columns) if files else pa.table({})


MARKER_FIELDS = ("run_id", "rows_out", "config_hash")  # what every partition marker holds


class MarkerError(ValueError):
    """A partition marker that cannot be read as one."""


def _read_marker(path: Path) -> dict:
    try:
        marker = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MarkerError(f"{path} is not a partition marker ({error}): rerun the stage that wrote its folder") from None
    missing = [name for name in MARKER_FIELDS if name not in marker] if isinstance(marker, dict) else list(MARKER_FIELDS)
    if missing:
        raise MarkerError(f"{path} is not a partition marker sylm-data writes: it lacks {', '.join(missing)}. A stage reads "
                          "folders that sylm-data wrote; rerun the stage that writes this one into the same --output")
    return marker


class OutputLayout:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def rejects_dir(self, stage: str) -> Path:
        return self.root / "rejects" / stage

    def done_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / DONE

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def ids_dir(self) -> Path:
        """Each source partition's sample ids, for the duplicate check across partitions (`duplicates`)."""
        return self.root / "_ids"

    def markers(self, stage: str) -> dict[str, dict]:
        """The committed partitions of `stage` and their markers; a marker that is not one that
        sylm-data writes (a hand-made input folder, a damaged file) is a `MarkerError` naming it."""
        return {path.stem: _read_marker(path) for path in sorted(self.done_dir(stage).glob("*.json"))}

    def write_marker(self, stage: str, partition: str, marker: dict) -> None:
        """Commit `partition` of `stage` (atomically: the marker is there whole or not at all)."""
        done = self.done_dir(stage)
        done.mkdir(parents=True, exist_ok=True)
        temporary = done / f".{partition}.json.partial"
        temporary.write_text(json.dumps(marker, indent=1, sort_keys=True))
        os.replace(temporary, done / f"{partition}.json")

    def clean(self, partition: str, final_stage: str, stages: list[str], kept: list[str] = ()) -> None:
        """Remove whatever an interrupted run left of a partition the final stage has not committed:
        the markers first (the final stage's, then those of the stages `kept` on the way, which are
        committed again with it), then the rows and rejects."""
        for stage in (final_stage, *kept):
            self.uncommit(partition, stage)
        for folder in self.written_folders(final_stage, stages, kept):
            for leftover in (folder / partition, *folder.glob(f"{TMP}/*/{partition}")):
                shutil.rmtree(leftover, ignore_errors=True)

    def uncommit(self, partition: str, stage: str) -> None:
        """Take a committed partition back (its marker first: from then on it is not output)."""
        (self.done_dir(stage) / f"{partition}.json").unlink(missing_ok=True)

    def written_folders(self, final_stage: str, stages: list[str], kept: list[str] = ()) -> list[Path]:
        """The folders a run of `stages` writes: the final stage's rows, every stage's rejects, and
        the rows of the stages kept on the way."""
        rejects = [self.rejects_dir(stage) for stage in stages]
        return [self.stage_dir(final_stage), *rejects, *(self.stage_dir(stage) for stage in kept)]

    def drop_staging(self, final_stage: str, stages: list[str], kept: list[str] = ()) -> None:
        """Remove the staging folders of the folders a finished run wrote: its own, and any a killed run
        left, which the run lock makes sure no live run writes. A run killed in a process whose Ray
        lives on (a notebook, the tests) leaves tasks Ray Data cancels without waiting for them: they
        can stage files after the next run's `clean` of their partition, and would stay for good."""
        for folder in self.written_folders(final_stage, stages, kept):
            shutil.rmtree(folder / TMP, ignore_errors=True)


@dataclass
class PartitionTally:
    """What has come out of one partition so far, summed over written batches."""

    rows: int = 0
    total: int = 0  # 0 until the batch holding the partition's last record is written
    rows_out: int = 0
    audio_ms: int = 0
    rejected: Counter = field(default_factory=Counter)  # "stage/reason" -> rows

    def add(self, summary: dict) -> None:
        self.rows += summary["rows"]
        self.total = max(self.total, summary["partition_total"])
        self.rows_out += summary["rows_out"]
        self.audio_ms += summary["audio_ms"]
        self.rejected.update(json.loads(summary["rejected"]))

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.rows == self.total


SUMMARY_SCHEMA = pa.schema(
    [("partition", pa.string()), ("rows", pa.int64()), ("partition_total", pa.int64()),
     ("rows_out", pa.int64()), ("audio_ms", pa.int64()), ("rejected", pa.string())]
)


def staged_name(ids: pa.ChunkedArray) -> str:
    """A batch's file name, from the ids it holds: a task Ray retries writes the same rows under
    the same name, replacing its first attempt's file instead of adding a copy."""
    digest = hashlib.sha1()
    for sample_id in ids.to_pylist():
        digest.update(sample_id.encode() + b"\0")
    return f"{digest.hexdigest()[:20]}.parquet"


def write_parquet(table: pa.Table, path: Path, groups: str | None = None, **options) -> None:
    """`table` into `path` atomically: a reader (or a run killed half way) never finds part of it.
    `groups`: a column whose values are each written as their own row group (in ascending order, the
    rows of one value in their order), so that a reader filtering on it reads only its own (a
    shuffle's buckets). `options`: `pq.ParquetWriter`'s (compression, dictionaries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    with pq.ParquetWriter(temporary, table.schema, **options) as writer:
        if groups is None:
            writer.write_table(table)
        else:
            table = table.combine_chunks()  # a take over many chunks is many times slower
            table = table.take(pc.sort_indices(table[groups]))
            values = table[groups].to_numpy(zero_copy_only=False)
            bounds = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1, [len(values)]])
            for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()) if len(values) else ():
                writer.write_table(table.slice(start, end - start))
    os.replace(temporary, path)


def write_buckets(table: pa.Table, buckets: np.ndarray, count: int, path: Path) -> None:
    """A shuffle's intermediate: `table`'s rows into an Arrow IPC file at `path` (atomically), its
    record batch b holding the rows of bucket b (`buckets`: each row's, 0..count-1) in their order,
    an empty batch for an empty bucket, so that bucket b's task reads only its own (`read_bucket`).
    IPC, not Parquet: written once and read once, the rows are not worth Parquet's encoding, which
    took several times longer both ways (`bench/interleave.py`)."""
    order = np.argsort(buckets, kind="stable")
    table = taken(table, order)
    rows = table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
    bounds = np.searchsorted(np.asarray(buckets)[order], np.arange(count + 1)).tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    with pa.ipc.new_file(temporary, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        for start, end in zip(bounds[:-1], bounds[1:]):
            writer.write_batch(rows.slice(start, end - start))
    os.replace(temporary, path)


_GATHERED = {pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(), pa.float32(),
             pa.float64()}  # value types the compiled gather takes (numba has no float16)


def taken(table: pa.Table, order: np.ndarray) -> pa.Table:
    """`table`'s rows `order`, one chunk per column. Lists of numbers without nulls are gathered
    range by range (`_gathered_lists`): Arrow's take copies their values one by one, about three
    times slower; other columns go through Arrow's take."""
    order = np.asarray(order, np.int64)
    if len(order) and not 0 <= order.min() <= order.max() < table.num_rows:
        raise IndexError(f"row indices {order.min()}..{order.max()} are not all among {table.num_rows} rows")
    indices = pa.array(order)
    columns = []
    for column in table.columns:
        values = column.combine_chunks()
        if (pa.types.is_list(values.type) and values.type.value_type in _GATHERED
                and not values.null_count and not values.values.null_count):
            offsets, items = values.offsets.to_numpy(), values.values.to_numpy()
            gathered_offsets, gathered_items = _gathered_lists(offsets, items, order)
            columns.append(pa.ListArray.from_arrays(gathered_offsets, gathered_items, type=values.type))
        else:
            columns.append(values.take(indices))
    return pa.Table.from_arrays(columns, schema=table.schema)


@compiled
def _gathered_lists(offsets, items, order):
    """The lists `order` of a list array (its `offsets` and flat `items`): their offsets and items."""
    gathered_offsets = np.empty(len(order) + 1, offsets.dtype)
    gathered_offsets[0] = 0
    for index in range(len(order)):
        row = order[index]
        gathered_offsets[index + 1] = gathered_offsets[index] + offsets[row + 1] - offsets[row]
    gathered_items = np.empty(gathered_offsets[-1], items.dtype)
    for index in range(len(order)):
        row = order[index]
        gathered_items[gathered_offsets[index] : gathered_offsets[index + 1]] = items[offsets[row] : offsets[row + 1]]
    return gathered_offsets, gathered_items


def read_bucket(path: Path, bucket: int) -> pa.Table:
    """Bucket `bucket`'s rows of a `write_buckets` file."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        if not 0 <= bucket < reader.num_record_batches:
            raise ValueError(f"{path} holds {reader.num_record_batches} buckets, not bucket {bucket}")
        return pa.Table.from_batches([reader.get_batch(bucket)])


def sorted_rows(table: pa.Table, sort_keys: list[tuple]) -> pa.Table:
    """`table` sorted (stably) by `sort_keys` (as `pc.sort_indices` takes them); the table itself
    when it is in that order already, as stored rows often are: the take would copy every value."""
    order = pc.sort_indices(table, sort_keys=sort_keys).to_numpy()
    if not (order[1:] < order[:-1]).any():
        return table
    return taken(table, order)


def by_partition(batch: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """The batch's rows of each partition it holds; the batch itself when it holds one (the common
    case: a filter would copy every value)."""
    partitions = pc.unique(batch[stream.PARTITION]).to_pylist()
    if len(partitions) == 1:
        yield partitions[0], batch
        return
    for partition in partitions:
        yield partition, batch.filter(pc.equal(batch[stream.PARTITION], partition))


def write_batch(batch: pa.Table, root: str, run_id: str, final_stage: str, contract: pa.Schema) -> pa.Table:
    """Write an in-flight batch's rows and rejects into the run's staging folders; one summary row per partition."""
    layout = OutputLayout(root)
    summaries = []
    for partition, rows in by_partition(batch):
        name = staged_name(rows["id"])
        accepted = stream.accepted(rows, contract)
        rejects = stream.rejects(rows)
        if accepted.num_rows:
            write_parquet(accepted, layout.stage_dir(final_stage) / TMP / run_id / partition / name)
        rejected: Counter = Counter()
        for stage in pc.unique(rejects["stage"]).to_pylist():
            of_stage = rejects.filter(pc.equal(rejects["stage"], stage))
            write_parquet(of_stage, layout.rejects_dir(stage) / TMP / run_id / partition / name)
            rejected.update(f"{stage}/{reason}" for reason in of_stage["reason"].to_pylist())
        audio_ms = pc.sum(accepted["duration_ms"]).as_py() if "duration_ms" in accepted.column_names else 0
        summaries.append(
            {
                "partition": partition,
                "rows": rows.num_rows,
                "partition_total": pc.max(rows[stream.PARTITION_TOTAL]).as_py(),
                "rows_out": accepted.num_rows,
                "audio_ms": audio_ms or 0,
                "rejected": json.dumps(rejected),
            }
        )
    return pa.Table.from_pylist(summaries, schema=SUMMARY_SCHEMA)


class StagingMismatch(RuntimeError):
    """A partition's staged files hold other rows than its batches reported: it is not committed."""


def store_batch(batch: pa.Table, root: str, run_id: str, stage: str, contract: pa.Schema) -> pa.Table:
    """Stage the rows of `stage` (its contract) that no stage has rejected so far, and pass the
    batch on: a fused run keeps a stage's rows (ingest's: the audio) while later stages run."""
    folder = OutputLayout(root).stage_dir(stage) / TMP / run_id
    for partition, rows in by_partition(batch):
        accepted = stream.accepted(rows, contract)
        if accepted.num_rows:
            write_parquet(accepted, folder / partition / staged_name(rows["id"]))
    return batch


def _staged_rows(folders: list[Path]) -> int:
    return sum(pq.read_metadata(file).num_rows for folder in folders if folder.exists() for file in folder.glob("*.parquet"))


def commit(layout: OutputLayout, partition: str, stages: list[str], markers: dict[str, dict]) -> None:
    """Move a complete partition's staged files into place and write its markers: `markers` names
    the stages the run writes, those it keeps in pipeline order, then its final stage, whose marker
    is written last (the commit point). A kept stage places its rows and the rejects of the stages
    up to it; the final stage its rows and the other rejects.

    The staged files must hold exactly the rows the partition's batches reported, all checked
    before anything moves: a file left by an attempt Ray gave up on (another batching of the same
    rows) would otherwise add copies."""
    written = list(markers)
    final = written[-1]
    run_id = markers[final]["run_id"]
    moves, placed = {}, 0
    for stage in written:
        upto = len(stages) if stage == final else stages.index(stage) + 1
        folders = [layout.stage_dir(stage)] + [layout.rejects_dir(name) for name in stages[placed:upto]]
        moves[stage], placed = [(folder / TMP / run_id / partition, folder) for folder in folders], upto
    rows = _staged_rows([moves[final][0][0]] + [staged for stage in written for staged, _ in moves[stage][1:]])
    if rows != markers[final]["rows_in"]:
        raise StagingMismatch(f"partition {partition}: {rows} staged rows for {markers[final]['rows_in']} samples")
    for stage in written[:-1]:
        rows = _staged_rows([moves[stage][0][0]])
        if rows != markers[stage]["rows_out"]:
            raise StagingMismatch(f"partition {partition}: {rows} staged {stage} rows for {markers[stage]['rows_out']}")
    for stage in written:
        _place(layout, stage, partition, moves[stage], markers[stage])


def _place(layout: OutputLayout, stage: str, partition: str, moves: list[tuple[Path, Path]], marker: dict) -> None:
    for source, folder in moves:
        if source.exists():
            os.replace(source, folder / partition)
    layout.write_marker(stage, partition, marker)
