"""A local manifest: JSONL lines of {audio, text, language, [id], [speaker], [quality], [duration],
[recording], [start_ms], [segment], …}.

`audio` (or `audio_path`) is a path relative to the manifest's folder; `duration` is in seconds.
`recording` names the recording a line's audio was cut from, `start_ms` its start there or
`segment` its number in the recording's order; other fields go to meta.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from sylm_data.schemas.reject import Reason
from sylm_data.sources.base import Partition, Reader, Record, expand, local_path, partition_id
from sylm_data.sources.fields import milliseconds

_KNOWN_FIELDS = {"id", "audio", "audio_path", "text", "language", "speaker", "quality", "duration",
                 "recording", "start_ms", "segment"}


class ManifestReader(Reader):
    source = "manifest"

    def partitions(self, inputs: list[str], root: str | None = None) -> list[Partition]:
        return [Partition(partition_id(self.source, found.relative), self.source, found.path) for found in expand(inputs, root)]

    def read(self, partition: Partition) -> Iterator[Record]:
        path = Path(local_path(partition.path))
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield self._record(path, number, line)

    @staticmethod
    def _record(path: Path, number: int, line: str) -> Record:
        fallback_key = f"{path.stem}-L{number:07d}"
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep to parse
            return Record(key=fallback_key, reject=Reason.BAD_METADATA, detail=f"line {number}: {error}"[:200])
        # values as found: `fields.checked` coerces or rejects them (an integer id becomes a string)
        key = fallback_key if fields.get("id") in (None, "") else fields["id"]
        audio_field = fields.get("audio") or fields.get("audio_path")
        if audio_field is None:
            return Record(key=key, reject=Reason.MISSING_AUDIO, detail=f"line {number}: no audio path")
        if not isinstance(audio_field, str):
            detail = f"line {number}: audio path is a {type(audio_field).__name__}, not a string"
            return Record(key=key, reject=Reason.BAD_METADATA, detail=detail)
        audio_path = path.parent / os.path.expanduser(audio_field)
        try:
            data = audio_path.read_bytes()
        except OSError as error:
            return Record(key=key, reject=Reason.MISSING_AUDIO, detail=f"{audio_path}: {error.strerror or error}")
        except ValueError as error:  # a path with a NUL in it
            return Record(key=key, reject=Reason.MISSING_AUDIO, detail=f"line {number}: {audio_field!r:.60}: {error}")
        return Record(
            key=key,
            audio=data,
            audio_name=audio_path.name,
            text=fields.get("text"),
            language=fields.get("language"),
            speaker=fields.get("speaker"),
            quality=fields.get("quality"),
            declared_duration_ms=milliseconds(fields.get("duration")),
            recording=fields.get("recording"),
            recording_start_ms=fields.get("start_ms"),
            segment_index=fields.get("segment"),
            meta={name: value for name, value in fields.items() if name not in _KNOWN_FIELDS},
        )
