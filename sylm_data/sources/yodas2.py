"""YODAS2 (`espnet/yodas2`): long recordings with timed utterances, cut here into segments.

Layout per subset (e.g. `data/en000/`): `audio/NNNNNNNN.tar.gz` (one audio file per recording,
named by its audio id), `text/NNNNNNNN.json` = `[{"audio_id": …, "text": {utt_id: text}}]`,
`duration/NNNNNNNN.txt` = `audio_id seconds` lines (not needed: recordings are decoded anyway).
An utterance id is
`{audio_id}-{index:05d}-{start_cs:08d}-{end_cs:08d}` (centiseconds). The subset name's letters
are the language. Segments are stored as lossless FLAC cuts of the decoded recording: the
source audio cannot be cut without decoding it.
"""

import json
import posixpath
import re
from collections.abc import Iterator

import numpy as np

from sylm_data import audio
from sylm_data.schemas.reject import Reason
from sylm_data.sources.base import Partition, Reader, Record, SourceError, expand, local_path, partition_id
from sylm_data.sources.tar import Group, Truncation, iter_groups

_UTTERANCE_ID = re.compile(r"^(?P<audio_id>.+)-(?P<index>\d{5})-(?P<start>\d{8})-(?P<end>\d{8})$")


def parse_utterance_id(utt_id: str) -> tuple[str, int, int]:
    """(audio_id, start_ms, end_ms) from a YODAS utterance id; ValueError when it does not parse."""
    match = _UTTERANCE_ID.match(utt_id)
    if match is None:
        raise ValueError(f"utterance id {utt_id!r} is not AUDIOID-NNNNN-START-END")
    return match["audio_id"], int(match["start"]) * 10, int(match["end"]) * 10


def _companion(audio_path: str, folder: str, suffix: str) -> str:
    subset_dir = posixpath.dirname(posixpath.dirname(audio_path))
    number = posixpath.basename(audio_path).split(".")[0]
    return posixpath.join(subset_dir, folder, f"{number}{suffix}")


def _language(audio_path: str) -> str | None:
    subset = posixpath.basename(posixpath.dirname(posixpath.dirname(audio_path)))
    letters = re.match(r"^[a-z]+", subset)
    return letters.group(0) if letters else None


class Yodas2Reader(Reader):
    source = "yodas2"

    def partitions(self, inputs: list[str], root: str | None = None) -> list[Partition]:
        partitions = []
        for found in expand(inputs, root):
            path = found.path
            if not path.endswith((".tar.gz", ".tar")) or posixpath.basename(posixpath.dirname(path)) != "audio":
                raise SourceError(f"{path}: a yodas2 input is a data/<subset>/audio/NNNNNNNN.tar.gz archive")
            companions = {"text": _companion(path, "text", ".json")}
            partitions.append(Partition(partition_id(self.source, found.relative), self.source, path, companions))
        return partitions

    def read(self, partition: Partition) -> Iterator[Record]:
        language = _language(partition.path)
        try:
            transcripts = self._transcripts(local_path(partition.companions["text"]))
        except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep to parse
            raise SourceError(f"text file for {partition.path}: {error}") from None
        seen_audio: set[str] = set()
        for item in iter_groups(local_path(partition.path), lambda group: True):
            if isinstance(item, Truncation):
                # recordings after the cut stay unseen and are reported as missing audio below
                if item.key is not None:
                    audio_id = posixpath.basename(item.key)
                    seen_audio.add(audio_id)
                    for utt_id in transcripts.get(audio_id, {}):
                        yield Record(key=utt_id, reject=Reason.TRUNCATED_ARCHIVE, detail=item.detail)
                continue
            audio_id = posixpath.basename(item.key)
            seen_audio.add(audio_id)
            yield from self._cut(item, audio_id, transcripts, language)
        for audio_id, utterances in transcripts.items():
            if audio_id in seen_audio:
                continue
            if not utterances:
                yield Record(key=audio_id, reject=Reason.EMPTY_TEXT, detail="recording has no utterances and no audio")
            for utt_id in utterances:
                yield Record(key=utt_id, reject=Reason.MISSING_AUDIO, detail=f"no audio for {audio_id}")

    @staticmethod
    def _transcripts(path: str) -> dict[str, dict]:
        """Utterance id -> text (as found: `fields.checked` rejects one that is not a string) per recording.

        Raises ValueError when the file is not the layout's list of {audio_id, text} entries.
        """
        with open(path, encoding="utf-8") as file:
            entries = json.load(file)
        if not isinstance(entries, list):
            raise ValueError(f"a {type(entries).__name__}, not a list of {{audio_id, text}} entries")
        transcripts = {}
        for number, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("audio_id"), str):
                raise ValueError(f"entry {number} has no audio_id string")
            if not isinstance(entry.get("text") or {}, dict):
                raise ValueError(f"entry {number} ({entry['audio_id']!r:.60}): text is not an object of utterance texts")
            transcripts[entry["audio_id"]] = entry.get("text") or {}
        return transcripts

    def _cut(self, group: Group, audio_id: str, transcripts: dict, language: str | None) -> Iterator[Record]:
        if audio_id not in transcripts:
            yield Record(key=audio_id, reject=Reason.MISSING_METADATA, detail="audio without a text entry")
            return
        utterances = transcripts[audio_id]
        if not utterances:
            yield Record(key=audio_id, reject=Reason.EMPTY_TEXT, detail="recording has no utterances")
            return
        extension, data = next(iter(group.members.items()))
        try:
            recording = audio.decode(data)
        except audio.AudioDecodeError as error:
            for utt_id in utterances:
                yield Record(key=utt_id, reject=Reason.DECODE_ERROR, detail=f"recording {audio_id}: {error}")
            return
        for utt_id, text in utterances.items():
            try:
                _, start_ms, end_ms = parse_utterance_id(utt_id)
            except ValueError as error:
                yield Record(key=utt_id, reject=Reason.BAD_METADATA, detail=str(error))
                continue
            first, last = (round(ms * recording.sample_rate / 1000) for ms in (start_ms, end_ms))
            if not 0 <= first < last <= len(recording.samples):
                yield Record(
                    key=utt_id,
                    reject=Reason.SEGMENT_OUT_OF_RANGE,
                    detail=f"{start_ms}-{end_ms} ms outside a {recording.duration_ms} ms recording",
                )
                continue
            segment = np.ascontiguousarray(recording.samples[first:last])
            try:
                cut = audio.encode_flac(segment, recording.sample_rate)
            except (RuntimeError, OverflowError) as error:  # a sample rate FLAC cannot hold
                yield Record(key=utt_id, reject=Reason.DECODE_ERROR, detail=f"recording {audio_id} as FLAC: {error}")
                continue
            yield Record(
                key=utt_id,
                audio=cut,
                audio_name=f"{utt_id}.flac",
                text=text,
                language=language,
                declared_duration_ms=end_ms - start_ms,
                meta={"audio_id": audio_id, "start_ms": start_ms, "end_ms": end_ms, "source_format": extension},
            )
