"""What every reader shares: partitions, records, input resolution (local globs and hf://)."""

import glob
import hashlib
import os
import posixpath
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
    path: str  # the main file: a local path or hf://owner/name@commit/file
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
    recording: str | None = None  # as the source names it; the pipeline namespaces it by source, as it does keys
    recording_start_ms: int | None = None
    segment_index: int | None = None
    meta: dict = field(default_factory=dict)
    reject: Reason | None = None
    detail: str | None = None


class Reader:
    """A source kind: which partitions the inputs hold, and the records of one partition."""

    def partitions(self, inputs: list[str], root: str | None = None) -> list[Partition]:
        """`root`: the dataset folder the partitions' ids are relative to (default: each glob's static prefix)."""
        raise NotImplementedError

    def read(self, partition: Partition) -> Iterator[Record]:
        raise NotImplementedError


@dataclass(frozen=True)
class Input:
    path: str  # as found: read from here
    relative: str  # the path below its dataset root: what identifies it


def partition_id(source: str, relative: str) -> str:
    """File stem plus a short hash of the source and the dataset-relative path: the same files
    reached through another folder, symlink or mount keep their ids, equal stems stay apart."""
    stem = posixpath.basename(relative).split(".")[0] or "input"
    return f"{stem}-{hashlib.sha1(f'{source}:{relative}'.encode()).hexdigest()[:8]}"


def static_prefix(pattern: str) -> str:
    """The folder a glob pattern starts from: its components before the first wildcard (a plain
    file path: its folder)."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts) - 1)
    return str(Path(*parts[:fixed])) if fixed else "."


def expand(inputs: list[str], root: str | None = None) -> list[Input]:
    """Local paths and globs (sorted, `**` allowed) and hf:// patterns, in the order given, each
    with its path relative to `root`, or else to its pattern's static prefix (hf://: OWNER/NAME/FILE, the
    revision left out; each repo is read at one commit, resolved once for all the inputs)."""
    from sylm_data.sources import hub

    found: dict[str, Input] = {}
    listing = hub.Listing()
    for pattern in inputs:
        if pattern.startswith(hub.SCHEME):
            matches = [(uri, hub.relative(uri)) for uri in listing.expand(pattern)]
        else:
            pattern = os.path.expanduser(pattern)
            paths = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern] * os.path.exists(pattern)
            base = os.path.expanduser(root) if root else static_prefix(pattern)
            matches = [(path, _relative(path, base)) for path in paths]
        if not matches:
            raise SourceError(f"no input matches {pattern!r}")
        for path, relative in matches:
            if relative in found and found[relative].path != path:
                raise SourceError(f"{found[relative].path} and {path} are both {relative!r} below their input folders: "
                                  "set ingest.root to a folder above both")
            found[relative] = Input(path, relative)
    return list(found.values())


def _relative(path: str, root: str) -> str:
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if relative.startswith(os.pardir):
        raise SourceError(f"{path} is not below the dataset root {root}")
    return relative.replace(os.sep, "/")


def local_path(path: str) -> str:
    """A local file for an input path, downloading hf:// files into the hub cache first."""
    from sylm_data.sources import hub

    return hub.download(path) if path.startswith(hub.SCHEME) else path
