"""Emilia and Emilia-YODAS: WebDataset tars of `{key}.mp3` + `{key}.json`.

Emilia json: id, wav, text, duration, speaker, language, dnsmos (text may start with a space).
Emilia-YODAS json: _id, text, duration, speaker, language, dnsmos, phone_count.
Fields beyond the common ones stay in `meta` as found (Emilia's `wav` path, `phone_count`), the
speaker label too (Emilia: the id up to `_W…`, per source unit; Emilia-YODAS: `EN_<video>_SPEAKER_00`,
pyannote's label within one video); Emilia-YODAS rows also get their YouTube `video_id`.

The recording and the segment's place in it come from the key: Emilia `EN_B00000_S00000_W000003`
is segment 3 of recording `EN_B00000_S00000` (W counts a source unit's segments in time order);
Emilia-YODAS `EN_<video>_W000003` is segment 3 of the video. A key of another form has neither.
"""

import json
import re
from collections.abc import Iterator

from sylm_data.schemas.reject import Reason
from sylm_data.sources.base import Partition, Reader, Record, expand, local_path, partition_id
from sylm_data.sources.fields import milliseconds
from sylm_data.sources.tar import Group, Truncation, iter_groups

AUDIO_EXTENSIONS = ("mp3", "flac", "wav", "opus", "ogg", "m4a", "webm")
_KNOWN_FIELDS = {"id", "_id", "text", "duration", "speaker", "language", "dnsmos"}
# {LANG}_B{batch}_S{source}_W{segment}; a W of over 18 digits would not fit the int64 column
_EMILIA_KEY = re.compile(r"(?P<recording>[A-Za-z]+_B\d+_S\d+)_W(?P<segment>\d{1,18})", re.ASCII)
# Emilia-YODAS keys: {LANG}_{VIDEO}_W{index}; YouTube ids hold letters, digits, '-' and '_' (the last _W is the segment)
_YODAS_KEY = re.compile(r"[A-Za-z]+_(?P<recording>[A-Za-z0-9_-]+)_W(?P<segment>\d{1,18})", re.ASCII)


def place(key: str, yodas: bool) -> tuple[str, int] | None:
    """(recording, segment index) of an Emilia or Emilia-YODAS key (the recording of an
    Emilia-YODAS key is its YouTube video id), None when the key is not of that form."""
    match = (_YODAS_KEY if yodas else _EMILIA_KEY).fullmatch(key)
    return (match["recording"], int(match["segment"])) if match else None


def _audio_extension(group: Group) -> str | None:
    return next((ext for ext in AUDIO_EXTENSIONS if ext in group.members), None)


def _is_complete(group: Group) -> bool:
    return "json" in group.members and _audio_extension(group) is not None


class EmiliaReader(Reader):
    def __init__(self, yodas: bool) -> None:
        self.source = "emilia-yodas" if yodas else "emilia"
        self.yodas = yodas

    def partitions(self, inputs: list[str], root: str | None = None) -> list[Partition]:
        return [Partition(partition_id(self.source, found.relative), self.source, found.path) for found in expand(inputs, root)]

    def read(self, partition: Partition) -> Iterator[Record]:
        for item in iter_groups(local_path(partition.path), _is_complete):
            if isinstance(item, Truncation):
                # a sample cut off mid-member is named; one cut off between members cannot be
                key = item.key or f"{partition.id}#truncated"
                yield Record(key=key, reject=Reason.TRUNCATED_ARCHIVE, detail=item.detail)
                continue
            yield self._record(item)

    def _record(self, group: Group) -> Record:
        extension = _audio_extension(group)
        if extension is None:
            return Record(key=group.key, reject=Reason.MISSING_AUDIO, detail=f"members: {sorted(group.members)}")
        if "json" not in group.members:
            return Record(key=group.key, reject=Reason.MISSING_METADATA, detail=f"no {group.key}.json")
        try:
            fields = json.loads(group.members["json"])
            if not isinstance(fields, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep to parse
            return Record(key=group.key, reject=Reason.BAD_METADATA, detail=str(error)[:200])
        meta = {name: value for name, value in fields.items() if name not in _KNOWN_FIELDS}
        recording, segment_index = place(group.key, self.yodas) or (None, None)
        if self.yodas and recording is not None:
            meta["video_id"] = recording
        # values as found: `fields.checked` coerces or rejects them
        return Record(
            key=group.key,
            audio=group.members[extension],
            audio_name=f"{group.key}.{extension}",
            text=fields.get("text"),
            language=fields.get("language"),
            speaker=fields.get("speaker"),
            quality=fields.get("dnsmos"),
            declared_duration_ms=milliseconds(fields.get("duration")),
            recording=recording,
            segment_index=segment_index,
            meta=meta,
        )
