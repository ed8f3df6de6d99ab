"""Library output goes to the run's log file; the terminal keeps the command's own lines.

Ray, DeepSpeed, transformers and torch print warnings, progress bars and log lines of their own,
from Python (logging handlers, warnings, print, tqdm; Ray also forwards its workers' output to
the driver) and from C++ (Ray's core worker writes to file descriptor 2). Filtering each would
miss the next one, so `to_log(path)` points file descriptors 1 and 2 at `path` around a command's
work: all of it lands there, however it was written. The command's own lines go through the
`Console` it hands back, which writes to the original stdout and stderr. With `path=None`
(`--verbose`) nothing moves. Under a harness that replaced sys.stdout (typer's CliRunner) nothing
moves either: the descriptors are not what the harness reads.
"""

import ctypes
import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Console:
    """Where the command's own lines go while library output is redirected."""

    out: TextIO
    err: TextIO

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def error_line(self, text: str) -> None:
        print(text, file=self.err, flush=True)


@contextmanager
def to_log(path: Path | None) -> Iterator[Console]:
    """Library output goes to `path` (appended; removed at the end if nothing came) while this is open."""
    if path is None or not _standard_descriptors():
        yield Console(sys.stdout, sys.stderr)
        return
    _flush()
    path = Path(path)
    created = [folder for folder in path.parents if not folder.exists()]  # removed again if nothing came
    path.parent.mkdir(parents=True, exist_ok=True)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    console = Console(*(open(fd, "w", buffering=1, encoding=stream.encoding or "utf-8", errors="replace",  # noqa: SIM115
                             closefd=False) for fd, stream in zip(saved, (sys.stdout, sys.stderr))))  # closed below
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield console
    finally:
        _flush()
        for stream in (console.out, console.err):
            try:
                stream.close()
            except OSError:
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        _remove_if_empty(path, created)


def _standard_descriptors() -> bool:
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a full disk under the log, or a closed stream
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # what C libraries hold in stdio's buffers
    except (OSError, AttributeError):
        pass


def _remove_if_empty(path: Path, created: list[Path]) -> None:
    try:
        if path.stat().st_size:
            return
        path.unlink()
        for folder in created:  # deepest first; one the run wrote into stays
            folder.rmdir()
    except OSError:
        pass
