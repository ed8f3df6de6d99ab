"""The one WebDataset shard writer: `<prefix>-NNNNNN.tar` files of a target size, plus `index.json`.

Deterministic: the same samples in the same order give byte-identical shards (fixed member order,
times and owners). Atomic: a shard and the index appear under their final names only when
complete. A sample key must not contain a dot (WebDataset splits names at the first dot).

A stage's shard folder is published per partition (`publish`): workers write each committed
partition's shards, `<partition>-NNNNNN.tar`, and a small manifest `_manifests/<partition>.json`
naming them; the driver merges the manifests into `index.json` and swaps it in atomically. A
partition whose manifest carries the same stamp (its marker's run and the config) is left
untouched, byte for byte; shards of partitions no longer in the output go once the new index is
in place, so a reader always finds a complete index and the shards it lists. With a `card`, the
folder also gets a dataset card (README.md, written after the index) that tells generic readers
which files are data and what they hold.

`min_shards` caps the samples per shard (`samples_per_shard`) so that a folder of enough samples
has at least that many shards: a plain WebDataset reader deals whole shards to DataLoader workers,
and a worker dealt none raises (or, with `empty_check=False`, idles).
"""

import functools
import json
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from sylm_data.compiled import compiled
from sylm_data.languages import string_buffers

INDEX = "index.json"
CARD = "README.md"  # the dataset card beside the index


def _tarfile_header(name: str, size: int) -> bytes:
    """The USTAR header tarfile writes for a regular file: mode 644, time 0, no owner."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = np.frombuffer(_tarfile_header("", 0), np.uint8).copy()  # no name, no bytes
_TEMPLATE[148:156] = ord(" ")  # the checksum field blank, as the checksum is summed
_FIXED_SUM = int(_TEMPLATE.sum()) - 11 * ord("0")  # the bytes' sum but the size field's digits (the name is empty)


def member_header(key: str, extension: str, size: int) -> bytes:
    """The tar header of shard member "<key>.<extension>", byte for byte what tarfile writes for
    it (`_tarfile_header`). tarfile's header building took most of the time of writing a shard of
    small samples. A name over 100 bytes (split at a slash, or refused) and a size past 11 octal
    digits go through tarfile itself."""
    encoded_key, encoded_extension = key.encode("utf-8", "surrogateescape"), extension.encode("utf-8", "surrogateescape")
    if len(encoded_key) + 1 + len(encoded_extension) > 100 or size >= 8**11:
        return _tarfile_header(f"{key}.{extension}", size)
    header = np.empty(512, np.uint8)
    _put_header(header, 0, np.frombuffer(encoded_key, np.uint8), 0, len(encoded_key),
                np.frombuffer(encoded_extension, np.uint8), 0, len(encoded_extension), size)
    return header.tobytes()


@compiled
def _put_header(out, at, key_bytes, key_start, key_end, extension_bytes, extension_start, extension_end, size):
    """At out[at:at + 512], the template with the name (key, ".", extension: 100 bytes at most),
    the size (below 8**11) and the checksum put in, as tarfile writes them."""
    out[at : at + 512] = _TEMPLATE
    checksum, place = _FIXED_SUM, at
    for index in range(key_start, key_end):
        out[place] = key_bytes[index]
        checksum += key_bytes[index]
        place += 1
    out[place] = 46  # "."
    checksum += 46
    place += 1
    for index in range(extension_start, extension_end):
        out[place] = extension_bytes[index]
        checksum += extension_bytes[index]
        place += 1
    for digit in range(10, -1, -1):  # 11 octal digits, then the NUL the template holds
        out[at + 124 + digit] = 48 + size % 8
        checksum += 48 + size % 8
        size //= 8
    for digit in range(5, -1, -1):  # 6 octal digits, a NUL, and the template's space
        out[at + 148 + digit] = 48 + checksum % 8
        checksum //= 8
    out[at + 154] = 0


class ShardWriter:
    """Write samples in order; `close()` finishes the last shard and writes the index."""

    def __init__(self, folder: str | Path, target_bytes: int = 256 * 2**20, extra_index: dict | None = None,
                 derive=None, prefix: str = "shard", write_index: bool = True, max_samples: int | None = None,
                 shard_stats=None) -> None:
        """`derive(stats) -> dict` adds figures computed from summed stats (a ratio, say) to each
        shard's entry and to the totals in index.json; without `write_index`, `close` only
        finishes the shards (a partition's part of a published folder). A shard ends at
        `target_bytes` or at `max_samples` samples, whichever comes first. `shard_stats(first,
        end) -> dict`: a finished shard's stats, summed over the samples written first..end-1
        (counting from 0) at once, not a dict per sample; numbers, or counts by name such as a
        histogram's bins (`add_stat` sums them over shards)."""
        self.folder = Path(folder)
        self.max_samples = max_samples
        self.prefix, self.write_index = prefix, write_index
        self.folder.mkdir(parents=True, exist_ok=True)
        self.target_bytes = target_bytes
        self.extra_index = extra_index or {}
        self.derive = derive or (lambda stats: {})
        self.shards: list[dict] = []
        self._archive: BinaryIO | None = None  # the shard being written
        self._offset = 0  # its bytes so far
        self._current: dict | None = None
        self._keys: set[str] = set()
        self._summed: set[str] = set()  # the stat names written (derived ones are recomputed, not summed)
        self.shard_stats = shard_stats
        self._written = 0  # samples written, over all shards

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: `members` maps an extension ("json", "mp3") to its bytes."""
        if not key or "." in key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no dot")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice")
        self._keys.add(key)
        size = sum(len(data) + 1024 for data in members.values())  # + a header block and padding, roughly
        if self._current is not None and self._current["samples"] and (
                self._current["bytes"] + size > self.target_bytes or self._current["samples"] == self.max_samples):
            self._finish_shard()
        if self._current is None:
            self._open_shard()
        for extension in sorted(members):
            data = members[extension]
            self._archive.write(member_header(key, extension, len(data)))
            self._archive.write(data)
            self._archive.write(bytes(-len(data) % tarfile.BLOCKSIZE))
            self._offset += tarfile.BLOCKSIZE + len(data) + -len(data) % tarfile.BLOCKSIZE
        self._current["samples"] += 1
        self._current["bytes"] += size
        self._written += 1

    def write_many(self, keys: pa.Array | pa.ChunkedArray, members: dict[str, pa.Array | pa.ChunkedArray]) -> None:
        """Samples in order, sample i being keys[i] with members[extension][i] (bytes or a string)
        for each extension: the shards `write` makes of them one at a time, each shard's part packed
        by one compiled pass, chunk by chunk of the arrays (joining them would copy every byte).
        A sample at a time, the headers and the calls cost 4 us a sample, most of a shard's time
        where samples are small."""
        names = keys.to_pylist()
        for name in names:
            if not name or "." in name:
                raise ValueError(f"sample key {name!r} must be non-empty and contain no dot")
        if len(set(names)) < len(names) or not self._keys.isdisjoint(names):
            raise ValueError("a sample key is written twice")
        extensions = sorted(members)
        for extension in extensions:
            if len(members[extension]) != len(names) or members[extension].null_count:
                raise ValueError(f"each of the {len(names)} samples needs a {extension!r} member, not null")
        aligned = pa.table([keys, *(members[extension] for extension in extensions)],
                           names=[str(place) for place in range(len(extensions) + 1)])
        first = 0
        for batch in aligned.to_batches():  # slices where every column is one piece of memory
            self._write_batch(names[first : first + batch.num_rows], batch.column(0), batch.columns[1:], extensions)
            first += batch.num_rows

    def _write_batch(self, names: list[str], keys: pa.Array, members: list[pa.Array], extensions: list[str]) -> None:
        payload_bounds, payload_bytes = _payloads(members)
        lengths = np.diff(payload_bounds, axis=1)
        key_bounds, key_bytes = string_buffers(keys)
        extension_bounds, extension_bytes = string_buffers(pa.array(extensions, pa.string()))
        if len(names) and (int(np.diff(key_bounds).max()) + 1 + int(np.diff(extension_bounds).max()) > 100
                           or int(lengths.max(initial=0)) >= 8**11):  # headers only tarfile writes
            for index, name in enumerate(names):
                self.write(name, {extension: payload_bytes[payload_bounds[place, index]:payload_bounds[place, index + 1]].tobytes()
                                  for place, extension in enumerate(extensions)})
            return
        self._keys.update(names)
        sizes = (lengths + 1024).sum(axis=0)  # as `write` counts them
        tar_ends = np.cumsum((tarfile.BLOCKSIZE + lengths + -lengths % tarfile.BLOCKSIZE).sum(axis=0))
        start = 0
        while start < len(names):
            if self._current is None:
                self._open_shard()
            end = _shard_end(sizes, start, self._current["bytes"], self._current["samples"], self.target_bytes,
                             -1 if self.max_samples is None else self.max_samples)
            if end == start:
                self._finish_shard()
                continue
            before = tar_ends[start - 1] if start else 0
            end = max(start + 1, min(end, int(np.searchsorted(tar_ends, before + _PACKED_BYTES, side="right"))))
            packed = np.empty(int(tar_ends[end - 1] - before), np.uint8)
            _pack_members(packed, key_bounds, key_bytes, extension_bounds, extension_bytes, payload_bounds, payload_bytes, start, end)
            self._archive.write(packed)
            self._offset += len(packed)
            self._current["samples"] += end - start
            self._current["bytes"] += int(sizes[start:end].sum())
            self._written += end - start
            start = end

    def _open_shard(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._current = {"name": name, "samples": 0, "bytes": 0}
        self._archive, self._offset = open(self.folder / f".{name}.partial", "wb"), 0

    def _finish_shard(self) -> None:
        # the end of a tar: two zero blocks, then zeros up to a whole record (as tarfile closes one)
        self._offset += 2 * tarfile.BLOCKSIZE
        self._archive.write(bytes(2 * tarfile.BLOCKSIZE + -self._offset % tarfile.RECORDSIZE))
        self._archive.close()
        name = self._current["name"]
        final = self.folder / name
        os.replace(self.folder / f".{name}.partial", final)
        first = self._written - self._current["samples"]
        stats = self.shard_stats(first, self._written) if self.shard_stats is not None else {}
        self._summed.update(stats)
        self.shards.append({**self._current, "bytes": final.stat().st_size, "stats": stats | self.derive(stats)})
        self._archive = self._current = None

    def close(self) -> dict:
        if self._current is not None:
            self._finish_shard()
        if not self.write_index:
            return {"shards": self.shards, "summed": sorted(self._summed)}
        return write_index(self.folder, self.shards, sorted(self._summed), self.extra_index, self.derive)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.close()
        elif self._archive is not None:
            self._archive.close()
            (self.folder / f".{self._current['name']}.partial").unlink(missing_ok=True)


_PACKED_BYTES = 16 * 2**20  # packed and written at a time: a shard's worth would cost its whole size in memory


def _payloads(arrays: list[pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """The members' bytes (binary or string arrays of equal length, no nulls), one extension's
    after another's, and their bounds: row e holds extension e's, sample i's bytes being
    bytes[bounds[e, i]:bounds[e, i + 1]]."""
    count = len(arrays[0]) if arrays else 0
    bounds, data, taken = np.zeros((len(arrays), count + 1), np.int64), [], 0
    for place, array in enumerate(arrays):
        array = array.cast(pa.large_binary())  # the bytes as they are, the offsets widened
        _, offsets, values = array.buffers()
        offsets = np.frombuffer(offsets, np.int64)[array.offset : array.offset + count + 1]
        data.append(np.frombuffer(values, np.uint8)[offsets[0] : offsets[-1]] if values is not None else np.zeros(0, np.uint8))
        bounds[place] = offsets - offsets[0] + taken
        taken += len(data[-1])
    return bounds, (data[0] if len(data) == 1 else np.concatenate(data) if data else np.zeros(0, np.uint8))


@compiled
def _shard_end(sizes, start, held_bytes, held_samples, target_bytes, max_samples):
    """Where the samples from `start` that join the open shard (holding held_*) end, by `write`'s
    rule: a sample joins unless the shard holds some and it would pass `target_bytes`, or the
    shard holds `max_samples` (-1: no cap)."""
    end = start
    while end < len(sizes) and not (held_samples and (held_bytes + sizes[end] > target_bytes or held_samples == max_samples)):
        held_bytes += sizes[end]
        held_samples += 1
        end += 1
    return end


@compiled
def _pack_members(out, key_bounds, key_bytes, extension_bounds, extension_bytes, payload_bounds, payload_bytes, first, end):
    """Samples first..end-1 as tar members into `out`: for each, for each extension in order, the
    header `member_header` writes for "<key>.<extension>", the bytes, zeros to a whole block."""
    at = 0
    for sample in range(first, end):
        for extension in range(len(extension_bounds) - 1):
            start, size = payload_bounds[extension, sample], payload_bounds[extension, sample + 1] - payload_bounds[extension, sample]
            _put_header(out, at, key_bytes, key_bounds[sample], key_bounds[sample + 1], extension_bytes,
                        extension_bounds[extension], extension_bounds[extension + 1], size)
            at += 512
            out[at : at + size] = payload_bytes[start : start + size]
            at += size
            padding = -size % 512
            out[at : at + padding] = 0
            at += padding
    return at


def add_stat(total: float | dict | None, value: float | dict) -> float | dict:
    """A stat summed over shards (or samples): numbers add, and so do dicts of counts, name by name."""
    if isinstance(value, dict):
        merged = dict(total or {})
        for name, count in value.items():
            merged[name] = merged.get(name, 0) + count
        return merged
    return (total or 0) + value


def write_index(folder: Path, shards: list[dict], summed: list[str], extra_index: dict, derive) -> dict:
    """index.json for `shards` (in their order), swapped in atomically."""
    totals = {name: functools.reduce(add_stat, (shard["stats"][name] for shard in shards if name in shard["stats"]), None)
              for name in summed}
    index = {
        "format": "sylm-data shards",
        "version": 1,
        "shards": shards,
        "total_samples": sum(shard["samples"] for shard in shards),
        "total_bytes": sum(shard["bytes"] for shard in shards),
        "stats": dict(totals) | derive(dict(totals)),
        **extra_index,
    }
    temporary = folder / f".{INDEX}.partial"
    temporary.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(temporary, folder / INDEX)
    return index


MANIFESTS = "_manifests"


def manifest_path(folder: Path, partition: str) -> Path:
    return folder / MANIFESTS / f"{partition}.json"


def read_manifest(folder: Path, partition: str) -> dict | None:
    try:
        return json.loads(manifest_path(folder, partition).read_text())
    except (OSError, ValueError):
        return None


def write_partition(folder: Path, partition: str, keys: pa.Array | pa.ChunkedArray, members: dict[str, pa.Array | pa.ChunkedArray],
                    target_bytes: int, stamp: dict, described: dict, derive=None, max_samples: int | None = None,
                    shard_stats=None) -> dict:
    """One partition's shards of its samples in order (`ShardWriter.write_many`; their stats by
    `ShardWriter`'s `shard_stats`), then its manifest (last, atomically: a manifest names only
    finished shards). `described`: figures the index merges across partitions (e.g. the unit
    tokenizer); they must agree."""
    folder.mkdir(parents=True, exist_ok=True)
    with ShardWriter(folder, target_bytes, derive=derive, prefix=partition, write_index=False,
                     max_samples=max_samples, shard_stats=shard_stats) as writer:
        writer.write_many(keys, members)
    written = writer.close()
    manifest = {"partition": partition, "stamp": stamp, "described": described} | written
    path = manifest_path(folder, partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(temporary, path)
    return manifest


def read_members(folder: Path, prefix: str = "", keys: set[str] | None = None):
    """(key, extension, bytes) of the members of the shards `<prefix>*.tar` in `folder`, shard by
    shard in name order, each in its order; only those of `keys` read, where given (a reader's
    view, for reports and checks)."""
    for shard in sorted(folder.glob(f"{prefix}*.tar")):
        with tarfile.open(shard) as archive:
            for member in archive:
                key, _, extension = member.name.partition(".")
                if keys is None or key in keys:
                    yield key, extension, archive.extractfile(member).read()


def samples_per_shard(samples: int, min_shards: int) -> int | None:
    """The most samples a shard may hold for a folder of `samples` to have at least `min_shards`
    shards (or one sample each, when it holds fewer); None when `min_shards` asks for nothing.

    A power of two at most samples / min_shards: every partition's shards then number at least
    its samples over the cap, together at least min_shards; and the cap (part of each partition's
    stamp) changes, rewriting the folder's shards, only when the folder's samples pass a doubling,
    not with every partition added."""
    if min_shards <= 1:
        return None
    return 1 << (max(samples // min_shards, 1).bit_length() - 1)


def write_card(folder: Path, text: str) -> None:
    temporary = folder / f".{CARD}.partial"
    temporary.write_text(text)
    os.replace(temporary, folder / CARD)


def publish(folder: Path, stamps: dict[str, dict], write, parallel, extra_index: dict, derive=None,
            largest: tuple[str, ...] = (), card=None) -> dict:
    """Bring `folder` up to date with the committed partitions (`stamps`: partition -> stamp).

    `write((partition, stamp))` writes one partition's shards and manifest, on a worker through
    `parallel(function, items)`; only partitions whose manifest lacks their stamp are written. The
    partitions' `described` figures must agree (ValueError), except those in `largest`: the
    index keeps their largest value. `card(index) -> str`: the folder's README.md."""
    stale = [(p, stamps[p]) for p in sorted(stamps) if (read_manifest(folder, p) or {}).get("stamp") != stamps[p]]
    parallel(write, stale)
    manifests = [m for m in (read_manifest(folder, p) for p in sorted(stamps)) if m is not None and m["shards"]]
    agreed = {json.dumps({k: v for k, v in m["described"].items() if k not in largest}, sort_keys=True) for m in manifests}
    if len(agreed) > 1:
        first, second = sorted(agreed)[:2]
        raise ValueError(f"the partitions' samples disagree ({first} vs {second}): "
                         "their unit ids mean different things; tokenize all partitions with one codebook")
    described = json.loads(next(iter(agreed), "{}"))
    described |= {key: max(m["described"][key] for m in manifests) for key in largest if manifests}
    shards = [shard for m in manifests for shard in m["shards"]]
    summed = sorted({name for m in manifests for name in m["summed"]})
    folder.mkdir(parents=True, exist_ok=True)
    index = write_index(folder, shards, summed, extra_index | described, derive or (lambda stats: {}))
    if card is not None:
        write_card(folder, card(index))
    _drop_unlisted(folder, {shard["name"] for shard in shards}, set(stamps))
    return index


def _drop_unlisted(folder: Path, listed: set[str], partitions: set[str]) -> None:
    """Shards and manifests the index no longer names (a partition gone, or one rewritten shorter)."""
    for shard in folder.glob("*.tar"):
        if shard.name not in listed:
            shard.unlink(missing_ok=True)
    for manifest in (folder / MANIFESTS).glob("*.json"):
        if manifest.stem not in partitions:
            manifest.unlink(missing_ok=True)
