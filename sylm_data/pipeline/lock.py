"""One run per output folder: DIR/.lock names the holder (run id, host, pid) and is touched while it runs.

A second run is refused while the holder lives: on this host, while its process exists; from
another host, while the lock was touched within `STALE_S`. When the holder is gone the next run
takes the lock over. A holder that finds the lock taken from it stops before committing anything
more (`LockLost`).
"""

import json
import os
import socket
import threading
import time
from pathlib import Path

NAME = ".lock"
TOUCH_EVERY_S = 10.0
STALE_S = 60.0


class LockHeld(RuntimeError):
    """Another live run holds the folder."""


class LockLost(RuntimeError):
    """The lock was taken over while this run held it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_alive(holder: dict, touched: float) -> bool:
    if holder.get("host") == socket.gethostname():
        return _alive(int(holder.get("pid", 0)))
    return time.time() - touched < STALE_S


class RunLock:
    def __init__(self, folder: str | Path, run_id: str) -> None:
        self.path = Path(folder) / NAME
        self.holder = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._toucher: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = json.dumps(self.holder)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over(mine)
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(mine)
        self._toucher = threading.Thread(target=self._touch, daemon=True, name="sylm-data-lock")
        self._toucher.start()

    def _take_over(self, mine: str) -> None:
        try:
            holder, touched = json.loads(self.path.read_text()), self.path.stat().st_mtime
        except (OSError, ValueError):
            holder, touched = {}, 0.0  # a lock half written by a killed run: nobody holds it
        if holder and _holder_alive(holder, touched):
            raise LockHeld(
                f"{self.path.parent} is in use by run {holder.get('run_id')} (host {holder.get('host')}, "
                f"pid {holder.get('pid')}): wait for it to end, or use another --output"
            )
        partial = self.path.with_name(f"{NAME}.{os.getpid()}.partial")
        partial.write_text(mine)
        os.replace(partial, self.path)

    def _touch(self) -> None:
        while not self._stop.wait(TOUCH_EVERY_S):
            if not self.holds():
                self.lost = True
                return
            os.utime(self.path)

    def holds(self) -> bool:
        try:
            return json.loads(self.path.read_text()).get("run_id") == self.holder["run_id"]
        except (OSError, ValueError):
            return False

    def check(self) -> None:
        """Raise LockLost when another run has taken the folder over."""
        if self.lost or not self.holds():
            self.lost = True
            raise LockLost(f"run {self.holder['run_id']} lost the lock on {self.path.parent} to another run; "
                           "its committed partitions stay, the rest is left to the run holding the folder")

    def release(self) -> None:
        self._stop.set()
        if self.holds():
            self.path.unlink(missing_ok=True)
