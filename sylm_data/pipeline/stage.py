"""What a stage is: a pure transform over in-flight Arrow batches, plus how the runner maps it."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

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


class Rejected(Exception):
    """Raised inside a stage for one sample: it goes to the rejects with this reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail[:300]


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
