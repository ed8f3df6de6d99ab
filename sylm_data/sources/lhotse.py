"""lhotse: a CutSet manifest (JSONL, optionally gzipped) or a Shar folder, one row per cut.

A partition is one cuts file: a manifest, or one shard of a Shar folder (`cuts.NNNNNN.jsonl.gz`,
whose audio is in `recording.NNNNNN.tar` beside it; a folder input stands for its shards). A cuts
file with a recording tar beside it takes each cut's audio from the tar, one member pair per line,
as lhotse's own Shar reader does; a manifest reads each recording's file (a relative path is taken
from the manifest's folder). Either way the bytes are stored as found, so a cut must be its whole
recording: all of it, every channel, no transforms, a single file. A recording tar is looked for on
local disk only: an hf:// cuts file is read as a manifest.

A row is a cut, not a supervision: its one supervision gives the text, language (ingest
normalises it) and speaker. Cutting a supervision out of a longer recording would re-encode it;
lhotse does that itself (`cuts.trim_to_supervisions().to_shar(...)` writes one recording per cut).
The supervision's word alignment goes to `meta["words"]` as {text, start_ms, end_ms} (times from
the start of the cut, as lhotse keeps them), the cut's and the supervision's custom fields to
`meta["custom"]` and `meta["supervision_custom"]` as found.

A row names no recording and no place in one (`Record.recording` stays None): a cut read here is
its whole recording, which orders nothing, and a Shar of supervisions cut out of a long recording
(`trim_to_supervisions().to_shar()`) keeps that recording's id on every cut but sets every cut's
start to 0, so their order in it is lost.
"""

import copy
import gzip
import importlib.util
import json
import posixpath
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from sylm_data.schemas import aligned
from sylm_data.schemas.reject import Reason
from sylm_data.sources.base import Input, Partition, Reader, Record, SourceError, expand, local_path, partition_id
from sylm_data.sources.fields import milliseconds

# a Shar shard's files: CUTS.NNNNNN.jsonl.gz and, for the audio field, RECORDINGS.NNNNNN.tar (also the companion's name)
CUTS, RECORDINGS = "cuts", "recording"
_COVER_TOLERANCE_S = 0.001  # a cut whose start or end is off its recording's by more covers only part of it
_SHAR_HINT = "cuts.trim_to_supervisions().to_shar(...) writes one recording per cut"


def require() -> None:
    """Raises SourceError when the lhotse package is not installed (it is an extra)."""
    if importlib.util.find_spec("lhotse") is None:
        raise SourceError("reading or writing lhotse needs the lhotse package: pip install 'sylm-data[lhotse]'")


def _is_cuts_file(name: str) -> bool:
    """A Shar shard's cuts file name: `cuts.jsonl.gz`, `cuts.000000.jsonl.gz` (or not gzipped)."""
    return name.split(".")[0] == CUTS and ".jsonl" in name


def _recordings_beside(cuts_path: str) -> str:
    """The recording tar of the Shar shard whose cuts are at `cuts_path`."""
    folder, name = posixpath.split(cuts_path)
    shard = name[len(CUTS):].split(".jsonl")[0]
    return posixpath.join(folder, f"{RECORDINGS}{shard}.tar")


class LhotseReader(Reader):
    source = "lhotse"

    def partitions(self, inputs: list[str], root: str | None = None) -> list[Partition]:
        require()
        partitions = []
        for found in expand(inputs, root):
            for cuts in _cuts_files(found):
                tar = _recordings_beside(cuts.path)
                shar = _is_cuts_file(posixpath.basename(cuts.path)) and Path(tar).is_file()
                partitions.append(Partition(partition_id(self.source, cuts.relative), self.source, cuts.path,
                                            {RECORDINGS: tar} if shar else {}))
        return partitions

    def read(self, partition: Partition) -> Iterator[Record]:
        path = Path(local_path(partition.path))
        shar = _SharRecordings(partition.companions[RECORDINGS]) if RECORDINGS in partition.companions else None
        for number, line in _lines(path):
            member = shar.take() if shar is not None else None  # taken for every line, as lhotse pairs them
            yield _record(f"{partition.id}-L{number:07d}", path.parent, line, shar, member)


def _cuts_files(found: Input) -> list[Input]:
    """A file input as it is; a folder: its Shar shards' cuts files."""
    if not Path(found.path).is_dir():
        return [found]
    names = sorted(name for name in Path(found.path).iterdir() if _is_cuts_file(name.name))
    if not names:
        raise SourceError(f"{found.path} holds no cuts.*.jsonl.gz: a lhotse input is a Shar folder or a CutSet manifest")
    return [Input(str(name), f"{found.relative}/{name.name}") for name in names]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-empty lines with their numbers; a cuts file that stops reading part way is a SourceError there."""
    with path.open("rb") as file:
        gzipped = file.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rt", encoding="utf-8", errors="replace") if gzipped
              else path.open(encoding="utf-8", errors="replace")) as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield number, line
    except (OSError, EOFError) as error:  # a truncated or corrupt gzip stream
        raise SourceError(f"{path}: {type(error).__name__}: {error}") from None


class _SharRecordings:
    """A Shar shard's recording tar, one member pair taken per cut line (lhotse's pairing); once it
    is damaged or used up, `damage` says how, for every cut after."""

    def __init__(self, path: str) -> None:
        from lhotse.shar.readers.tar import TarIterator

        self.path = path
        self._pairs = iter(TarIterator(path))
        self.damage: str | None = None

    def take(self) -> tuple[bytes | None, str] | None:
        """(audio bytes, or None for lhotse's no-data placeholder; the member name), or None once damaged."""
        if self.damage is not None:
            return None
        try:
            recording, name = next(self._pairs)
        except StopIteration:
            self.damage = f"{self.path} ends before this cut"
            return None
        except Exception as error:  # tarfile's, json's and lhotse's errors alike: the rest of the tar is lost
            self.damage = f"{self.path}: {type(error).__name__}: {error}"[:300]
            return None
        return (None if recording is None else recording.sources[0].source), name.as_posix()


class _Unusable(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail[:300]


def _record(fallback_key: str, folder: Path, line: str, shar: _SharRecordings | None,
            member: tuple[bytes | None, str] | None) -> Record:
    from lhotse import MonoCut
    from lhotse.serialization import deserialize_item

    try:
        fields = json.loads(line)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        cut = deserialize_item(copy.deepcopy(fields))  # lhotse's from_dict takes its argument apart
    except Exception as error:  # json's errors, and whatever lhotse's constructors raise on a malformed cut
        return Record(key=fallback_key, reject=Reason.BAD_METADATA, detail=f"{type(error).__name__}: {error}"[:200])
    if not isinstance(cut, MonoCut):
        return Record(key=getattr(cut, "id", fallback_key), reject=Reason.BAD_METADATA,
                      detail=f"a {type(cut).__name__}, not a MonoCut: a row is one cut of one recording")
    try:
        _check_whole(cut)
        audio, audio_name = _shar_audio(cut.id, shar, member) if shar is not None else _file_audio(cut, folder)
    except _Unusable as problem:
        return Record(key=cut.id, reject=problem.reason, detail=problem.detail)
    (supervision,) = cut.supervisions
    (supervision_fields,) = fields["supervisions"]
    return Record(
        key=cut.id,
        audio=audio,
        audio_name=audio_name,
        text=supervision.text,
        language=supervision.language,
        speaker=supervision.speaker,
        declared_duration_ms=milliseconds(cut.duration),
        meta=_meta(supervision, fields.get("custom"), supervision_fields.get("custom")),
    )


def _check_whole(cut) -> None:
    """Raises _Unusable unless the cut is one transcript over the whole of one recording file."""
    recording = cut.recording
    if recording is None:
        raise _Unusable(Reason.MISSING_AUDIO, "the cut has no recording")
    if not cut.supervisions:
        raise _Unusable(Reason.MISSING_METADATA, "the cut has no supervision (no transcript)")
    if len(cut.supervisions) > 1:
        raise _Unusable(Reason.BAD_METADATA, f"{len(cut.supervisions)} supervisions: a row holds one transcript ({_SHAR_HINT})")
    if len(recording.sources) != 1:
        raise _Unusable(Reason.BAD_METADATA, f"{len(recording.sources)} audio sources (a file per channel): "
                        "a row stores one file as found")
    if recording.transforms:
        names = ", ".join(type(transform).__name__ for transform in recording.transforms)
        raise _Unusable(Reason.BAD_METADATA, f"recording transforms ({names}) change the audio: its file is not the cut's audio")
    channels = set(cut.channel) if isinstance(cut.channel, list) else {cut.channel}
    if (cut.start > _COVER_TOLERANCE_S or cut.end < recording.duration - _COVER_TOLERANCE_S
            or channels != set(recording.channel_ids)):
        raise _Unusable(Reason.SEGMENT_OUT_OF_RANGE, (
            f"the cut is {cut.start:.3f}-{cut.end:.3f} s, channels {sorted(channels)} of recording {recording.id} "
            f"(0-{recording.duration:.3f} s, channels {recording.channel_ids}): a row stores a whole recording as found "
            f"({_SHAR_HINT})"))


def _shar_audio(cut_id: str, shar: _SharRecordings, member: tuple[bytes | None, str] | None) -> tuple[bytes, str]:
    if member is None:
        raise _Unusable(Reason.TRUNCATED_ARCHIVE, shar.damage)
    data, name = member
    key = PurePosixPath(name)
    if str(key.parent / key.stem) != cut_id:  # how lhotse's Shar reader matches a member to its cut
        raise _Unusable(Reason.MISSING_AUDIO, f"{shar.path} holds {name!r} where this cut's audio belongs")
    if data is None:
        raise _Unusable(Reason.MISSING_AUDIO, f"{shar.path} holds a no-data placeholder for this cut")
    return data, key.name


def _file_audio(cut, folder: Path) -> tuple[bytes, str]:
    (source,) = cut.recording.sources
    if source.type == "shar":
        raise _Unusable(Reason.MISSING_AUDIO, "a Shar cut without its recording tar beside its cuts file")
    if source.type != "file":
        raise _Unusable(Reason.MISSING_AUDIO, f"audio source of type {source.type!r}: only files and Shar tars are read")
    file = folder / source.source
    try:
        return file.read_bytes(), file.name
    except OSError as error:
        raise _Unusable(Reason.MISSING_AUDIO, f"{file}: {error.strerror or error}") from None
    except ValueError as error:  # a path with a NUL in it
        raise _Unusable(Reason.MISSING_AUDIO, f"{source.source!r:.60}: {error}") from None


def _meta(supervision, custom: dict | None, supervision_custom: dict | None) -> dict:
    meta = {}
    if supervision.alignment and "word" in supervision.alignment:
        meta["words"] = [{aligned.WORD_TEXT: item.symbol, aligned.WORD_START_MS: round(item.start * 1000),
                          aligned.WORD_END_MS: round((item.start + item.duration) * 1000)}
                         for item in supervision.alignment["word"]]
    if custom:
        meta["custom"] = custom
    if supervision_custom:
        meta["supervision_custom"] = supervision_custom
    if supervision.gender is not None:
        meta["gender"] = supervision.gender
    return meta
