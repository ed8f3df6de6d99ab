"""The output folder: where each stage's rows and rejects go, and how a partition is committed.

    DIR/<stage>/<partition>/*.parquet          a stage's rows (contract in schemas/)
    DIR/<stage>/_done/<partition>.json         the partition's marker: it is complete, with counts
    DIR/rejects/<stage>/<partition>/*.parquet  `reject` rows
    DIR/_ids/<partition>.parquet               a source partition's ids (`duplicates`)
    DIR/runs/<run-id>.json                     run records
    DIR/shards/                                WebDataset shards + index.json

Workers write each batch under `.tmp/<run-id>/<partition>/` (invisible to readers: pyarrow skips
dot folders), in a file named by the ids it holds, so a task Ray retries after its worker died
replaces its first attempt's file instead of adding a copy. When every input sample of a
partition has come out, the driver checks the staged row count, renames the staged folders into
place and writes the marker, each step atomic: committed output is what the markers name. A
partition without a marker is wiped and recomputed on the next run, so a run killed at any point
resumes without duplicates or losses.
"""

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sylm_data.schemas import stream

TMP = ".tmp"
DONE = "_done"


def read_rows(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """Every committed Parquet row under `folder` (staging, markers and other files left out)."""
    files = sorted(
        str(path) for path in Path(folder).rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)
    )
    return ds.dataset(files, format="parquet").to_table(columns=columns) if files else pa.table({})


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
        return {path.stem: json.loads(path.read_text()) for path in sorted(self.done_dir(stage).glob("*.json"))}

    def clean(self, partition: str, final_stage: str, stages: list[str], store: str | None = None) -> None:
        """Remove whatever an interrupted run left of an uncommitted partition (and of the stage it
        stores on the way, `store`, which is committed again with it)."""
        if store:
            self.uncommit(partition, store)
        for folder in self.written_folders(final_stage, stages, store):
            for leftover in (folder / partition, *folder.glob(f"{TMP}/*/{partition}")):
                shutil.rmtree(leftover, ignore_errors=True)

    def uncommit(self, partition: str, stage: str) -> None:
        """Take a committed partition back (its marker first: from then on it is not output)."""
        (self.done_dir(stage) / f"{partition}.json").unlink(missing_ok=True)

    def written_folders(self, final_stage: str, stages: list[str], store: str | None = None) -> list[Path]:
        """The folders a run of `stages` writes: the final stage's rows, every stage's rejects, and
        the rows of a stage stored on the way."""
        stored = [self.stage_dir(store)] if store else []
        return [self.stage_dir(final_stage)] + [self.rejects_dir(stage) for stage in stages] + stored

    def drop_staging(self, run_id: str, final_stage: str, stages: list[str], store: str | None = None) -> None:
        for folder in self.written_folders(final_stage, stages, store):
            shutil.rmtree(folder / TMP / run_id, ignore_errors=True)


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


def _write_atomic(table: pa.Table, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.partial"
    pq.write_table(table, temporary)
    os.replace(temporary, folder / name)


def write_batch(batch: pa.Table, root: str, run_id: str, final_stage: str, contract: pa.Schema) -> pa.Table:
    """Write an in-flight batch's rows and rejects into the run's staging folders; one summary row per partition."""
    layout = OutputLayout(root)
    summaries = []
    for partition in pc.unique(batch[stream.PARTITION]).to_pylist():
        rows = batch.filter(pc.equal(batch[stream.PARTITION], partition))
        name = staged_name(rows["id"])
        accepted = stream.accepted(rows, contract)
        rejects = stream.rejects(rows)
        if accepted.num_rows:
            _write_atomic(accepted, layout.stage_dir(final_stage) / TMP / run_id / partition, name)
        rejected: Counter = Counter()
        for stage in pc.unique(rejects["stage"]).to_pylist():
            of_stage = rejects.filter(pc.equal(rejects["stage"], stage))
            _write_atomic(of_stage, layout.rejects_dir(stage) / TMP / run_id / partition, name)
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
    batch on: a fused run keeps the ingest rows (the audio) while later stages run."""
    folder = OutputLayout(root).stage_dir(stage) / TMP / run_id
    for partition in pc.unique(batch[stream.PARTITION]).to_pylist():
        rows = batch.filter(pc.equal(batch[stream.PARTITION], partition))
        accepted = stream.accepted(rows, contract)
        if accepted.num_rows:
            _write_atomic(accepted, folder / partition, staged_name(rows["id"]))
    return batch


def _staged_rows(folders: list[Path]) -> int:
    return sum(pq.read_metadata(file).num_rows for folder in folders if folder.exists() for file in folder.glob("*.parquet"))


def commit(layout: OutputLayout, partition: str, final_stage: str, stages: list[str], marker: dict,
           store: str | None = None, store_marker: dict | None = None) -> None:
    """Move a complete partition's staged files into place, then write its marker (the commit
    point); with `store`, that stage's rows and marker first.

    The staged files must hold exactly the rows the partition's batches reported: a file left by an
    attempt Ray gave up on (another batching of the same rows) would otherwise add copies."""
    folders = layout.written_folders(final_stage, stages)
    staged = [folder / TMP / marker["run_id"] / partition for folder in folders]
    rows = _staged_rows(staged)
    if rows != marker["rows_in"]:
        raise StagingMismatch(f"partition {partition}: {rows} staged rows for {marker['rows_in']} samples")
    if store:
        stored = layout.stage_dir(store) / TMP / marker["run_id"] / partition
        if _staged_rows([stored]) != store_marker["rows_out"]:
            raise StagingMismatch(f"partition {partition}: {_staged_rows([stored])} staged {store} rows for {store_marker['rows_out']}")
        _place(layout, store, partition, [(stored, layout.stage_dir(store))], store_marker)
    _place(layout, final_stage, partition, list(zip(staged, folders)), marker)


def _place(layout: OutputLayout, stage: str, partition: str, moves: list[tuple[Path, Path]], marker: dict) -> None:
    for source, folder in moves:
        if source.exists():
            os.replace(source, folder / partition)
    done = layout.done_dir(stage)
    done.mkdir(parents=True, exist_ok=True)
    temporary = done / f".{partition}.json.partial"
    temporary.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(temporary, done / f"{partition}.json")
