"""A local manifest: JSONL lines of {audio, text, language, [id], [speaker], [quality], …}.

`audio` (or `audio_path`) is a path relative to the manifest's folder; other fields go to meta.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from sylm_data.schemas.reject import Reason
from sylm_data.sources.base import Partition, Reader, Record, expand, local_path, partition_id

_KNOWN_FIELDS = {"id", "audio", "audio_path", "text", "language", "speaker", "quality", "duration"}


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
        except ValueError as error:
            return Record(key=fallback_key, reject=Reason.BAD_METADATA, detail=f"line {number}: {error}"[:200])
        key = str(fields.get("id") or fallback_key)
        audio_field = fields.get("audio") or fields.get("audio_path")
        if not isinstance(audio_field, str):
            return Record(key=key, reject=Reason.MISSING_AUDIO, detail=f"line {number}: no audio path")
        audio_path = path.parent / os.path.expanduser(audio_field)
        try:
            data = audio_path.read_bytes()
        except OSError as error:
            return Record(key=key, reject=Reason.MISSING_AUDIO, detail=f"{audio_path}: {error.strerror}")
        duration = fields.get("duration")
        quality = fields.get("quality")
        return Record(
            key=key,
            audio=data,
            audio_name=audio_path.name,
            text=fields.get("text") if isinstance(fields.get("text"), str) else None,
            language=fields.get("language"),
            speaker=str(fields["speaker"]) if fields.get("speaker") is not None else None,
            quality=quality if isinstance(quality, (int, float)) else None,
            declared_duration_ms=round(duration * 1000) if isinstance(duration, (int, float)) else None,
            meta={name: value for name, value in fields.items() if name not in _KNOWN_FIELDS},
        )
