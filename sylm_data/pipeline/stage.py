"""What a stage is: a pure transform over in-flight Arrow batches, plus how the runner maps it."""

import functools
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from sylm_data.schemas import reject, stream
from sylm_data.schemas.reject import Reason

SOURCES = "sources"  # what ingest consumes: the source readers, not a stage output

Transform = Callable[[pa.Table], pa.Table]  # in-flight batch -> in-flight batch, same rows, rejects marked


def resolve_device(device: str) -> str:
    """`auto` is cuda when this process sees a GPU, else cpu; anything else is taken as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class StageConfigError(ValueError):
    """A stage cannot run with its config (unknown backend, missing model): one line saying what to do."""


class StageStartFailed(RuntimeError):
    """A worker could not build a stage's transform (its model would not load). Ray reports it only as
    text inside the actor's death, so its message is one line the driver can find there."""

    def __init__(self, stage_name: str, error: BaseException) -> None:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        super().__init__(f"[{stage_name}] {first_line}")

    @classmethod
    def found_in(cls, report: str) -> str | None:
        """The message of a StageStartFailed in a worker's error report, if there is one."""
        marker = f"{cls.__name__}: "
        lines = [line.split(marker, 1)[1] for line in report.splitlines() if marker in line]
        return lines[-1].strip() if lines else None


class Rejected(Exception):
    """Raised inside a stage for one sample: it goes to the rejects with this reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail[:300]


def error_detail(error: BaseException) -> str:
    """What a `stage_error` reject says about the exception: its type and message."""
    return f"{type(error).__name__}: {error}"[:300]


def in_slices(transform: Transform, rows: int) -> Transform:
    """`transform` called on `rows` rows of a batch at a time, its outputs concatenated in order.
    Ray Data hands a map task blocks of up to 128 MiB (a whole partition of small rows); a
    vectorised transform over one slice at a time keeps its arrays in the CPU's caches."""
    return functools.partial(_sliced, transform=transform, rows=rows)


def _sliced(batch: pa.Table, transform: Transform, rows: int) -> pa.Table:
    if batch.num_rows <= rows:
        return transform(batch)
    return pa.concat_tables([transform(batch.slice(start, rows)) for start in range(0, batch.num_rows, rows)])


def isolate(transform: Transform, stage_name: str, contract: pa.Schema) -> Transform:
    """`transform` made to cost a failing sample its own row, never its batch or the run.

    A batch that raises is run again row by row (out of memory: in halves first, down to one row);
    a row that still raises alone is rejected by `stage_name` as `stage_error` with
    `error_detail` (a `Rejected` keeps its reason and detail), its traceback printed. Rows rejected
    upstream are not retried: they come out as they went in. The result holds the batch's rows in
    their order, in `stream.in_flight(contract)`, the schema `transform` returns.
    """
    return functools.partial(_isolated, transform=transform, stage_name=stage_name, schema=stream.in_flight(contract))


def _isolated(batch: pa.Table, transform: Transform, stage_name: str, schema: pa.Schema) -> pa.Table:
    pieces = list(_outputs(batch, transform, stage_name, schema))
    return pa.concat_tables(pieces) if pieces else schema.empty_table()


@dataclass(frozen=True)
class _Failure:
    reason: Reason
    detail: str
    out_of_memory: bool
    trace: str


def _call(transform: Transform, batch: pa.Table) -> pa.Table | _Failure:
    # the exception is let go of here: its frames may hold the memory a retry needs
    try:
        return transform(batch)
    except Rejected as rejected:
        return _Failure(rejected.reason, rejected.detail, False, "")
    except Exception as error:
        return _Failure(Reason.STAGE_ERROR, error_detail(error), _out_of_memory(error), traceback.format_exc())


def _out_of_memory(error: Exception) -> bool:
    torch = sys.modules.get("torch")  # torch's error comes only from torch: never load it here
    return isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.cuda.OutOfMemoryError))


def _outputs(batch: pa.Table, transform: Transform, stage_name: str, schema: pa.Schema) -> Iterator[pa.Table]:
    """The transform's output for `batch`, in pieces, in row order."""
    outcome = _call(transform, batch)
    if isinstance(outcome, pa.Table):
        yield outcome
    elif batch.num_rows == 1:
        print(outcome.trace, end="", file=sys.stderr)
        yield _rejected(batch, schema, stage_name, outcome)
    else:
        size = max((batch.num_rows + 1) // 2, 1) if outcome.out_of_memory else 1
        print(f"{stage_name}: a batch of {batch.num_rows} rows raised {outcome.detail}; retrying {size} at a time",
              file=sys.stderr)
        for start in range(0, batch.num_rows, size):
            part = batch.slice(start, size)
            if part.num_rows == 1 and part[stream.REJECT_REASON][0].is_valid:
                yield _rejected(part, schema)
            else:
                yield from _outputs(part, transform, stage_name, schema)


# what a rejected row keeps: which sample it is, and the partition it counts toward
_KEPT = [reject.ID, reject.SOURCE, stream.PARTITION, stream.PARTITION_TOTAL]
_REJECT = [stream.REJECT_STAGE, stream.REJECT_REASON, stream.REJECT_DETAIL]


def _rejected(row: pa.Table, schema: pa.Schema, stage_name: str = "", failure: _Failure | None = None) -> pa.Table:
    """One in-flight row as a reject in `schema`: as upstream rejected it, else by `stage_name` for `failure`."""
    (record,) = row.select(_KEPT + _REJECT).to_pylist()
    if record[stream.REJECT_REASON] is None:
        stream.mark_rejected(record, [], stage_name, failure.reason, failure.detail)
    return pa.Table.from_pylist([record], schema=schema)


@dataclass(frozen=True)
class MapOptions:
    """How Ray maps a stage: plain tasks, or a pool of actors that each hold a model."""

    actors: bool = False
    concurrency: int = 0  # actors in the pool (at least 1); for tasks, the most at once (0: as many as fit)
    num_cpus: float = 1.0  # per task or actor
    num_gpus: float = 0.0  # per actor
    batch_size: int | None = None  # rows per call; None = whatever a block holds


def model_actors(on_gpu: bool, actors: int, gpus_per_actor: float, batch_size: int) -> MapOptions:
    """A pool of actors that each hold a model, with their GPU share when the model runs on CUDA."""
    return MapOptions(actors=True, concurrency=actors, num_gpus=gpus_per_actor if on_gpu else 0.0, batch_size=batch_size)


@dataclass(frozen=True)
class Stage:
    name: str
    consumes: str  # SOURCES or the name of the stage whose output this one reads
    contract: pa.Schema  # the rows it writes (schemas/)
    description: str
    config_type: type  # a dataclass: the `[name]` section of the config
    # config -> transform; for an actor stage this runs once per actor (loads the model)
    make_transform: Callable[[object], Transform]
    map_options: Callable[[object], MapOptions] = lambda config: MapOptions()
    # runs on the driver before any work starts; raises StageConfigError
    preflight: Callable[[object], None] = lambda config: None
    # runs on the driver once every partition is committed, given the stage's output folder and
    # `parallel(function, items) -> results` (Ray tasks); e.g. fits a model on what the rows
    # gathered, or has workers write shards; returns a summary for the run record
    finalize: Callable[[object, Path, Callable], dict] | None = None
    # runs on the driver before the plan, given how many rows the run's input holds (0: not known
    # before reading, e.g. sources); returns the config the workers get (e.g. a sampling share)
    prepare: Callable[[object, int], object] = lambda config, input_rows: config
    # decodes the audio of rows whose contract leaves it in the ingest output: a run starting here
    # joins it back by id
    needs_audio: bool = False
    # the runner wraps the transform in `isolate`; off only for a stage whose rows depend on their batch
    isolated: bool = True
    # the runner calls the (isolated) transform on at most this many rows of a block at a time
    # (`in_slices`); None: on whole blocks
    rows_per_call: int | None = None
