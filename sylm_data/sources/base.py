"""What every reader shares: partitions, records, input resolution (local globs and hf://)."""

import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sylm_data.schemas.reject import Reason


class SourceError(ValueError):
    """The inputs cannot be read at all (nothing matches a glob, unknown source kind)."""


@dataclass(frozen=True)
class Partition:
    id: str  # stable and file-name safe: the same inputs give the same ids on every run
    source: str
    path: str  # the main file: a local path or hf://owner/name/file
    companions: dict[str, str] = field(default_factory=dict)  # e.g. YODAS2 text and duration files


@dataclass
class Record:
    """One input sample as found; `reject` set when the reader could not unpack it."""

    key: str
    audio: bytes | None = None
    audio_name: str | None = None
    text: str | None = None
    language: str | None = None
    speaker: str | None = None
    quality: float | None = None
    declared_duration_ms: int | None = None
    meta: dict = field(default_factory=dict)
    reject: Reason | None = None
    detail: str | None = None


class Reader:
    """A source kind: which partitions the inputs hold, and the records of one partition."""

    def partitions(self, inputs: list[str]) -> list[Partition]:
        raise NotImplementedError

    def read(self, partition: Partition) -> Iterator[Record]:
        raise NotImplementedError


def partition_id(path: str) -> str:
    """File stem plus a short hash of the full input, so equal stems in two folders stay apart."""
    stem = Path(path).name.split(".")[0] or "input"
    return f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def expand(inputs: list[str]) -> list[str]:
    """Local paths and globs (sorted, `**` allowed) and hf:// patterns, in the order given."""
    from sylm_data.sources import hub

    paths: list[str] = []
    for pattern in inputs:
        if pattern.startswith(hub.SCHEME):
            matches = hub.expand(pattern)
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        else:
            matches = [os.path.expanduser(pattern)] if os.path.exists(os.path.expanduser(pattern)) else []
        if not matches:
            raise SourceError(f"no input matches {pattern!r}")
        paths.extend(matches)
    return list(dict.fromkeys(paths))


def local_path(path: str) -> str:
    """A local file for an input path, downloading hf:// files into the hub cache first."""
    from sylm_data.sources import hub

    return hub.download(path) if path.startswith(hub.SCHEME) else path
