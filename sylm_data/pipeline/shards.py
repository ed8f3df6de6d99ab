"""The one WebDataset shard writer: `shard-NNNNNN.tar` files of a target size, plus `index.json`.

Deterministic: the same samples in the same order give byte-identical shards (fixed member order,
times and owners). Atomic: a shard and the index appear under their final names only when
complete. A sample key must not contain a dot (WebDataset splits names at the first dot).
"""

import io
import json
import os
import tarfile
from pathlib import Path

INDEX = "index.json"


class ShardWriter:
    """Write samples in order; `close()` finishes the last shard and writes the index."""

    def __init__(self, folder: str | Path, target_bytes: int = 256 * 2**20, extra_index: dict | None = None,
                 derive=None) -> None:
        """`derive(stats) -> dict` adds figures computed from summed stats (a ratio, say) to each
        shard's entry and to the totals in index.json."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.target_bytes = target_bytes
        self.extra_index = extra_index or {}
        self.derive = derive or (lambda stats: {})
        self.shards: list[dict] = []
        self._archive: tarfile.TarFile | None = None
        self._current: dict | None = None
        self._keys: set[str] = set()
        self._summed: set[str] = set()  # the stat names written (derived ones are recomputed, not summed)

    def write(self, key: str, members: dict[str, bytes], stats: dict[str, float] | None = None) -> None:
        """One sample: `members` maps an extension ("json", "mp3") to its bytes; `stats` are summed per shard."""
        if not key or "." in key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no dot")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice")
        self._keys.add(key)
        size = sum(len(data) + 1024 for data in members.values())  # + a header block and padding, roughly
        if self._current is not None and self._current["bytes"] + size > self.target_bytes and self._current["samples"]:
            self._finish_shard()
        if self._current is None:
            self._open_shard()
        for extension in sorted(members):
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size = len(members[extension])
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
            self._archive.addfile(info, io.BytesIO(members[extension]))
        self._current["samples"] += 1
        self._current["bytes"] += size
        totals = self._current["stats"]
        for name, value in (stats or {}).items():
            totals[name] = totals.get(name, 0) + value

    def _open_shard(self) -> None:
        name = f"shard-{len(self.shards):06d}.tar"
        self._current = {"name": name, "samples": 0, "bytes": 0, "stats": {}}
        self._archive = tarfile.open(self.folder / f".{name}.partial", "w", format=tarfile.USTAR_FORMAT)

    def _finish_shard(self) -> None:
        self._archive.close()
        name = self._current["name"]
        final = self.folder / name
        os.replace(self.folder / f".{name}.partial", final)
        stats = dict(self._current["stats"])
        self._summed.update(stats)
        self.shards.append({**self._current, "bytes": final.stat().st_size, "stats": stats | self.derive(stats)})
        self._archive = self._current = None

    def close(self) -> dict:
        if self._current is not None:
            self._finish_shard()
        totals = {name: sum(shard["stats"].get(name, 0) for shard in self.shards) for name in sorted(self._summed)}
        index = {
            "format": "sylm-data shards",
            "version": 1,
            "shards": self.shards,
            "total_samples": sum(shard["samples"] for shard in self.shards),
            "total_bytes": sum(shard["bytes"] for shard in self.shards),
            "stats": dict(totals) | self.derive(dict(totals)),
            **self.extra_index,
        }
        temporary = self.folder / f".{INDEX}.partial"
        temporary.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(temporary, self.folder / INDEX)
        return index

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.close()
        elif self._archive is not None:
            self._archive.close()
            (self.folder / f".{self._current['name']}.partial").unlink(missing_ok=True)
