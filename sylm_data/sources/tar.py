"""Stream a (possibly gzipped) WebDataset-style tar as groups of members sharing a key.

The key is the member path up to the first dot of its file name, made relative the way GNU tar
names members when it writes an archive: no leading `/`, nothing up to a `..` (`/etc/x.json` ->
`etc/x`, `../x.json` -> `x`). Nothing is extracted here, but keys become ids and shard member names
downstream, where they must not point outside a folder. Members of one sample should be adjacent,
but a group that looks incomplete is held back in case its partner comes later; what is still
incomplete at the end is returned as such, never dropped.
"""

import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from sylm_data.sources.base import SourceError


@dataclass
class Group:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension (after the first dot) -> bytes


@dataclass
class Truncation:
    """The archive ended early: `key` is the sample whose member was being read (None: between members)."""

    key: str | None
    detail: str


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: `a/b.tar.gz` -> (`a/b`, `tar.gz`)."""
    folder, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    parts = posixpath.join(folder, stem).split("/")
    climbs = max((index for index, part in enumerate(parts) if part == ".."), default=-1)
    return "/".join(part for part in parts[climbs + 1 :] if part not in ("", ".")), extension.lower()


def iter_groups(path: str, is_complete) -> Iterator[Group | Truncation]:
    """Yield complete groups as soon as they close, then the incomplete ones, then any Truncation.

    Raises SourceError when the file is not a tar archive at all.
    """
    pending: dict[str, Group] = {}
    current: Group | None = None
    member_name: str | None = None
    truncation: Truncation | None = None
    try:
        archive = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, EOFError) as error:
        raise SourceError(f"{path} is not a readable tar archive: {error}") from None
    try:
        with archive:
            for member in archive:
                if not member.isfile():
                    continue
                member_name = member.name
                key, extension = split_key(member.name)
                data = archive.extractfile(member).read()
                if current is not None and (current.key != key or extension in current.members):
                    # a repeated member starts another sample under the same key: ingest rejects it
                    # as a duplicate instead of one silently overwriting the other
                    yield from _close(current, pending, is_complete)
                    current = None
                if current is None:
                    current = pending.pop(key, None) or Group(key)
                current.members[extension] = data
                member_name = None
            if _unread_rest(archive):
                detail = f"data after byte {archive.offset} is not read as members (damage or a second archive)"
                truncation = Truncation(None, detail)
    except (tarfile.TarError, EOFError, OSError) as error:
        where = split_key(member_name)[0] if member_name else None
        truncation = Truncation(where, f"{type(error).__name__}: {error}")
        if where is not None and current is not None and current.key == where:
            current = None  # the member being read is lost; its group is reported by the truncation
    if truncation is None and _cut_between_blocks(path):
        # tarfile reads a header cut short as the end of the archive; the size gives it away
        truncation = Truncation(None, f"archive size {os.path.getsize(path)} is not a whole number of 512-byte blocks")
    if current is not None:
        yield from _close(current, pending, is_complete)
    yield from pending.values()
    if truncation is not None:
        yield truncation


def _unread_rest(archive: tarfile.TarFile) -> bool:
    """Whether more than zero padding follows where iteration stopped: tarfile ends quietly at a
    header it cannot parse (damage mid-file, a second archive appended), leaving members unread."""
    while chunk := archive.fileobj.read(1 << 16):
        if chunk.count(0) != len(chunk):
            return True
    return False


def _cut_between_blocks(path: str) -> bool:
    with open(path, "rb") as file:
        compressed = file.read(2) == b"\x1f\x8b"
    return not compressed and os.path.getsize(path) % tarfile.BLOCKSIZE != 0


def _close(group: Group, pending: dict[str, Group], is_complete) -> Iterator[Group]:
    if is_complete(group):
        yield group
    elif group.key in pending:
        yield pending.pop(group.key)  # two incomplete groups under one key: report both
        pending[group.key] = group
    else:
        pending[group.key] = group
