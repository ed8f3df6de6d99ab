"""YODAS2 (`espnet/yodas2`): long recordings with timed utterances, cut here into segments.

Layout per subset (e.g. `data/en000/`): `audio/NNNNNNNN.tar.gz` (one `./<audio_id>.wav` per
recording, 24 kHz), `text/NNNNNNNN.json` = `[{"audio_id": …, "text": {utt_id: text}}]` (`text`
may be `{}`), `duration/NNNNNNNN.txt` = `audio_id seconds` lines (not needed: the audio is
measured as it is decoded). An utterance id is `{audio_id}-{index:05d}-{start_cs:08d}-{end_cs:08d}`
(centiseconds). The subset name is the language's letters and three digits (`en000`, `en100`:
different caption sources, per the dataset's notes); it is kept in each record's `meta` so runs
can tell them apart and `ingest.subsets` can choose.

Segments are stored as lossless FLAC cuts of the decoded recording (the source audio cannot be
cut without decoding it). A recording is decoded as it streams out of the archive and cut as it
goes, in start order, so memory holds the longest utterance, not the recording (`audio.cut`).
A segment ending past the decoded audio is cut short there with `overrun_ms` in its meta (the
official loader slices without checking); ingest decides how much overrun it accepts.
Each segment names its recording (the audio id), its start in it (`Record.recording_start_ms`)
and its number in the id (`Record.segment_index`).
"""

import json
import posixpath
import re
import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from sylm_data import audio
from sylm_data.schemas.reject import Reason
from sylm_data.sources.base import Partition, Reader, Record, SourceError, expand, local_path, partition_id
from sylm_data.sources.tar import split_key

# `meta` keys other code reads (ingest's subset and overrun checks)
META_SUBSET = "subset"
META_OVERRUN_MS = "overrun_ms"

SUBSET_NAME = re.compile(r"^[a-z]+\d{3}$")
# a caption is seconds long; a span this long is a broken id, and cutting it would hold that much audio
MAX_SEGMENT_MS = 30 * 60 * 1000
_AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "opus", "ogg", "m4a", "webm")
_UTTERANCE_ID = re.compile(r"^(?P<audio_id>.+)-(?P<index>\d{5})-(?P<start>\d{8})-(?P<end>\d{8})$")


def parse_utterance_id(utt_id: str) -> tuple[str, int, int]:
    """(audio_id, start_ms, end_ms) from a YODAS utterance id; ValueError when it does not parse."""
    match = _UTTERANCE_ID.match(utt_id)
    if match is None:
        raise ValueError(f"utterance id {utt_id!r} is not AUDIOID-NNNNN-START-END")
    return match["audio_id"], int(match["start"]) * 10, int(match["end"]) * 10


def segment_number(utt_id: str) -> int:
    """The utterance's number in its recording (NNNNN), from an id `parse_utterance_id` takes."""
    return int(_UTTERANCE_ID.match(utt_id)["index"])


def subset_of(audio_path: str) -> str:
    """The subset folder of an audio archive: `…/data/en000/audio/00000000.tar.gz` -> `en000`."""
    return posixpath.basename(posixpath.dirname(posixpath.dirname(audio_path)))


def _companion(audio_path: str, folder: str, suffix: str) -> str:
    subset_dir = posixpath.dirname(posixpath.dirname(audio_path))
    number = posixpath.basename(audio_path).split(".")[0]
    return posixpath.join(subset_dir, folder, f"{number}{suffix}")


def _language(subset: str) -> str | None:
    letters = re.match(r"^[a-z]+", subset)
    return letters.group(0) if letters else None


@dataclass(frozen=True)
class _Damage:
    """Where a pre-pass over the archive found it broken: after `whole` file members read whole,
    while reading member `key` (None: between members)."""

    whole: int
    key: str | None
    detail: str


@dataclass(frozen=True)
class _Utterance:
    utt_id: str
    text: object  # as found: `fields.checked` rejects one that is not a string
    start_ms: int
    end_ms: int
    segment_index: int


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

    def read(self, partition: Partition, subsets: Collection[str] = ()) -> Iterator[Record]:
        """The partition's utterances; with `subsets` (ingest.subsets) and the partition's subset
        not among them, every utterance is rejected `subset_filtered` without opening the audio."""
        subset = subset_of(partition.path)
        try:
            transcripts = self._transcripts(local_path(partition.companions["text"]))
        except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep to parse
            raise SourceError(f"text file for {partition.path}: {error}") from None
        if subsets and subset not in subsets:
            detail = f"subset {subset} not in {sorted(subsets)}"
            for audio_id, utterances in transcripts.items():
                for key in utterances or [audio_id]:
                    yield Record(key=key, reject=Reason.SUBSET_FILTERED, detail=detail)
            return
        path = local_path(partition.path)
        damage = _damage(path)
        seen_audio: set[str] = set()
        for audio_id, extension, member in _members(path, damage.whole if damage else None):
            seen_audio.add(audio_id)
            yield from self._cut(member, audio_id, extension, transcripts, subset)
        if damage is not None and damage.key is not None:
            # a recording cut off mid-member is named; ones after a cut between members stay
            # unseen and are reported as missing audio below
            audio_id = posixpath.basename(damage.key)
            seen_audio.add(audio_id)
            for utt_id in transcripts.get(audio_id, {}):
                yield Record(key=utt_id, reject=Reason.TRUNCATED_ARCHIVE, detail=damage.detail)
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

    def _cut(self, member: BinaryIO, audio_id: str, extension: str, transcripts: dict, subset: str) -> Iterator[Record]:
        if audio_id not in transcripts:
            yield Record(key=audio_id, reject=Reason.MISSING_METADATA, detail="audio without a text entry")
            return
        if not transcripts[audio_id]:
            yield Record(key=audio_id, reject=Reason.EMPTY_TEXT, detail="recording has no utterances")
            return
        timed = []
        for utt_id, text in transcripts[audio_id].items():
            try:
                _, start_ms, end_ms = parse_utterance_id(utt_id)
            except ValueError as error:
                yield Record(key=utt_id, reject=Reason.BAD_METADATA, detail=str(error))
                continue
            if end_ms <= start_ms:
                yield Record(key=utt_id, reject=Reason.SEGMENT_OUT_OF_RANGE,
                             detail=f"{start_ms}-{end_ms} ms ends before it starts")
            elif end_ms - start_ms > MAX_SEGMENT_MS:
                yield Record(key=utt_id, reject=Reason.TOO_LONG,
                             detail=f"{start_ms}-{end_ms} ms: a segment over {MAX_SEGMENT_MS // 60_000} min is not cut")
            else:
                timed.append(_Utterance(utt_id, text, start_ms, end_ms, segment_number(utt_id)))
        if not timed:
            return
        meta = {"audio_id": audio_id, "source_format": extension, META_SUBSET: subset}
        language = _language(subset)
        done: set[int] = set()
        try:
            with audio.open_stream(member) as stream:
                rate = stream.sample_rate
                spans = [(round(u.start_ms * rate / 1000), round(u.end_ms * rate / 1000)) for u in timed]
                for index, samples in audio.cut(stream.blocks(), spans):
                    done.add(index)
                    yield _segment(timed[index], samples, stream, meta, language)
        except audio.AudioDecodeError as error:
            for index, utterance in enumerate(timed):
                if index not in done:
                    yield Record(key=utterance.utt_id, reject=Reason.DECODE_ERROR,
                                 detail=f"recording {audio_id}: {error}")


def _segment(utterance: _Utterance, samples, stream: audio.AudioStream, meta: dict, language: str | None) -> Record:
    """The record of one cut (`samples`: what `audio.cut` gave, short when the span ran past the audio)."""
    start_ms, end_ms, rate = utterance.start_ms, utterance.end_ms, stream.sample_rate
    if len(samples) == 0:
        recording_ms = round(1000 * stream.samples_read / rate)
        return Record(key=utterance.utt_id, reject=Reason.SEGMENT_OUT_OF_RANGE,
                      detail=f"{start_ms}-{end_ms} ms outside a {recording_ms} ms recording")
    try:
        cut = audio.encode_flac(samples, rate)
    except (RuntimeError, OverflowError) as error:  # a sample rate FLAC cannot hold
        return Record(key=utterance.utt_id, reject=Reason.DECODE_ERROR,
                      detail=f"recording {meta['audio_id']} as FLAC: {error}")
    meta = meta | {"start_ms": start_ms, "end_ms": end_ms}
    cut_ms = end_ms - start_ms
    if round(start_ms * rate / 1000) + len(samples) < round(end_ms * rate / 1000):  # ran past the audio
        cut_ms = round(1000 * len(samples) / rate)
        meta[META_OVERRUN_MS] = end_ms - start_ms - cut_ms
    return Record(
        key=utterance.utt_id,
        audio=cut,
        audio_name=f"{utterance.utt_id}.flac",
        text=utterance.text,
        language=language,
        declared_duration_ms=cut_ms,
        recording=meta["audio_id"],
        recording_start_ms=start_ms,
        segment_index=utterance.segment_index,  # a gap in the numbers is an utterance missing or rejected
        meta=meta,
    )


def _damage(path: str) -> _Damage | None:
    """Read the archive through once, keeping nothing, to find where it is broken before any of it
    is cut: a recording cut off mid-member is rejected whole, as if it had been read whole.

    Raises SourceError when the file is not a tar archive at all.
    """
    whole, key = 0, None
    try:
        with _open_archive(path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key = split_key(member.name)[0]
                data = archive.extractfile(member)
                while data.read(1 << 16):
                    pass
                whole, key = whole + 1, None
    except (tarfile.TarError, EOFError, OSError) as error:
        return _Damage(whole, key, f"{type(error).__name__}: {error}")
    return None


def _open_archive(path: str) -> tarfile.TarFile:
    """`path` opened as a stream (gzipped or not); SourceError when it is not a tar archive at all."""
    try:
        return tarfile.open(path, mode="r|*")
    except (tarfile.TarError, EOFError) as error:
        raise SourceError(f"{path} is not a readable tar archive: {error}") from None


def _members(path: str, limit: int | None) -> Iterator[tuple[str, str, BinaryIO]]:
    """(audio_id, extension, a file reading it front to back) per audio member, in archive order,
    up to `limit` file members; each file is valid until the next is asked for."""
    with _open_archive(path) as archive:
        count = 0
        for member in archive:
            if not member.isfile():
                continue
            if count == limit:
                return
            count += 1
            key, extension = split_key(member.name)
            if extension in _AUDIO_EXTENSIONS:
                yield posixpath.basename(key), extension, archive.extractfile(member)
