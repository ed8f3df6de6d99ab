"""What a stage is: a pure transform over in-flight Arrow batches, plus how the runner maps it."""

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

SOURCES = "sources"  # what ingest consumes: the source readers, not a stage output


@dataclass(frozen=True)
class Stage:
    name: str
    consumes: str  # SOURCES or the name of the stage whose output this one reads
    contract: pa.Schema  # the rows it writes (schemas/)
    description: str
    config_type: type  # a dataclass: the `[name]` section of the config
    # in-flight batch (schemas.stream) -> in-flight batch; the same number of rows, rejects marked
    transform: Callable[[pa.Table, object], pa.Table]
