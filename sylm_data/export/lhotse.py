"""lhotse Shar from an align or tokenize output: `sylm-data export lhotse DIR/align --output OUT`.

One shard per committed partition, numbered in partition order: `cuts.NNNNNN.jsonl.gz` and
`recording.NNNNNN.tar`, the layout lhotse's Shar reader expects (`CutSet.from_shar(in_dir=OUT)`).
A row becomes a MonoCut over its whole recording, with one supervision: text, language, speaker and
`alignment={"word": [AlignmentItem(symbol, start, duration), ...]}` in seconds. The recording tar
holds per cut `<id>.<audio_format>`, the audio bytes as the ingest row stores them (lhotse's own
Shar writer would decode and encode them again), then `<id>.json`, the recording manifest with
lhotse's `shar` placeholder source. The contract's columns lhotse has no field for (source,
quality, meta, aligner, word_unit; tokenize rows also units, unit_start_ms, unit_end_ms,
tokenizer) go into `cut.custom` under their column names, `meta` as the JSON object it holds.

A Ray task per shard streams its partition's rows with their audio joined from DIR/ingest, a batch
at a time; the driver gets one summary per shard. The shards are written into a hidden folder
beside OUT, renamed to OUT once all are in: OUT is complete or absent, and holds nothing else
(lhotse's reader takes every file in it for a field).
"""

import contextlib
import functools
import gzip
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pyarrow as pa
import soundfile

from sylm_data.pipeline import output, partitions, runner
from sylm_data.schemas import aligned, utterance
from sylm_data.sources import Partition, SourceError
from sylm_data.sources import lhotse as shar

# the columns lhotse's own fields carry (the audio: the recording tar); the others go to cut.custom
_NATIVE = {utterance.ID, utterance.AUDIO, utterance.AUDIO_FORMAT, utterance.SAMPLE_RATE, utterance.DURATION_MS,
           utterance.TEXT, utterance.LANGUAGE, utterance.SPEAKER, aligned.WORDS}


class ExportError(ValueError):
    """The export cannot be made: one line saying what to do."""


def export(stage_dir: Path, out: Path, parallel: Callable[[Callable, list], list], batch_rows: int) -> dict:
    """Write the Shar folder `out` from the committed partitions of `stage_dir` (DIR/align or
    DIR/tokenize) and their audio in DIR/ingest, a shard per partition through
    `parallel(function, items) -> results` (Ray tasks: `runner.Workers.map`); returns
    {shards, cuts, left_out, example}."""
    stage_dir, out = Path(stage_dir), Path(out)
    contract = _contract(stage_dir)
    try:
        shar.require()
    except SourceError as error:
        raise ExportError(str(error)) from None
    layout = output.OutputLayout(stage_dir.parent)
    stored = layout.stage_dir(runner.STORED)
    if not stored.is_dir():
        raise ExportError(f"{stored} is missing: the audio lives in the ingest rows, so export a stage of an output "
                          "folder that holds them (a run starting at ingest keeps them)")
    found = partitions.stage_partitions(stage_dir)
    if not found:
        raise ExportError(f"{stage_dir} holds no finished partition: run --stage {stage_dir.name} first")
    committed = layout.markers(runner.STORED)
    missing = [p.id for p in found if p.id not in committed]
    if missing:
        raise ExportError(f"{stored} lacks the committed rows of {len(missing)} partition(s) (e.g. {missing[0]}), "
                          f"which hold their audio: run ingest (and {stage_dir.name}) again for them")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder: choose a new --output or delete it")
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write = functools.partial(write_shard, contract=contract, audio_from=str(stored), folder=str(staging),
                              batch_rows=batch_rows)
    summaries = parallel(write, list(enumerate(found)))
    failed = [summary["error"] for summary in summaries if summary["error"]]
    if failed:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(failed[0])
    os.replace(staging, out)
    examples = [summary["example"] for summary in summaries if summary["example"]]
    return {"shards": len(found), "cuts": sum(summary["cuts"] for summary in summaries),
            "left_out": sum(summary["left_out"] for summary in summaries), "example": examples[0] if examples else None}


def _contract(stage_dir: Path) -> pa.Schema:
    from sylm_data.pipeline import registry

    stage = registry.STAGES.get(stage_dir.name)
    if not stage_dir.is_dir() or stage is None or aligned.WORDS not in stage.contract.names:
        raise ExportError(f"{stage_dir} is not an align or tokenize output folder (DIR/align, DIR/tokenize)")
    return stage.contract


def write_shard(item: tuple[int, Partition], contract: pa.Schema, audio_from: str, folder: str, batch_rows: int) -> dict:
    """Shard `index` of `folder` from one partition: {cuts, left_out (rows whose id lhotse's Shar
    reader cannot match to its tar member), example (one such id), error (None, or why the
    partition's audio cannot be joined)}."""
    index, partition = item
    custom_names = [name for name in contract.names if name not in _NATIVE]
    summary = {"cuts": 0, "left_out": 0, "example": None, "error": None}
    with _gzip_lines(Path(folder) / f"{shar.CUTS}.{index:06d}.jsonl.gz") as cuts, \
            tarfile.open(Path(folder) / f"{shar.RECORDINGS}.{index:06d}.tar", "w") as recordings:
        try:
            for batch in partitions.read_stage_partition(partition, contract, batch_rows, audio_from):
                for row in batch.to_pylist():
                    name = f"{row[utterance.ID]}.{row[utterance.AUDIO_FORMAT]}"
                    if not _matches(name, row[utterance.ID]):
                        summary["left_out"] += 1
                        summary["example"] = summary["example"] or row[utterance.ID]
                        continue
                    cut = cut_of(row, custom_names)
                    _add(recordings, name, row[utterance.AUDIO])
                    _add(recordings, f"{row[utterance.ID]}.json", json.dumps(cut.recording.to_dict()).encode())
                    cuts.write(json.dumps(cut.to_dict(), ensure_ascii=False) + "\n")
                    summary["cuts"] += 1
        except ValueError as error:  # the ingest rows no longer hold every row's audio
            summary["error"] = str(error)
    return summary


def cut_of(row: dict, custom_names: list[str]):
    """One aligned or tokenized row (with its audio) as a lhotse MonoCut; its recording has the
    `shar` placeholder source, the audio going to the recording tar."""
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment
    from lhotse.supervision import AlignmentItem

    sample_id, rate = row[utterance.ID], row[utterance.SAMPLE_RATE]
    channels, num_samples = _shape(row[utterance.AUDIO], rate, row[utterance.DURATION_MS])
    channel_ids = list(range(channels))
    channel = channel_ids[0] if channels == 1 else channel_ids
    recording = Recording(id=sample_id, sources=[AudioSource(type="shar", channels=channel_ids, source="")],
                          sampling_rate=rate, num_samples=num_samples, duration=num_samples / rate, channel_ids=channel_ids)
    words = [AlignmentItem(symbol=word[aligned.WORD_TEXT], start=word[aligned.WORD_START_MS] / 1000,
                           duration=(word[aligned.WORD_END_MS] - word[aligned.WORD_START_MS]) / 1000)
             for word in row[aligned.WORDS]]
    supervision = SupervisionSegment(id=sample_id, recording_id=sample_id, start=0.0, duration=recording.duration,
                                     channel=channel, text=row[utterance.TEXT], language=row[utterance.LANGUAGE],
                                     speaker=row[utterance.SPEAKER], alignment={"word": words})
    custom = {name: row[name] for name in custom_names if row[name] is not None}
    if utterance.META in custom:
        custom[utterance.META] = json.loads(custom[utterance.META])
    return MonoCut(id=sample_id, start=0.0, duration=recording.duration, channel=channel, recording=recording,
                   supervisions=[supervision], custom=custom)


def _shape(data: bytes, rate: int, duration_ms: int) -> tuple[int, int]:
    """(channels, samples) of encoded audio: from its header where libsndfile, lhotse's reader
    here, reads it; else PyAV's channel count and the row's measured duration."""
    try:
        info = soundfile.info(io.BytesIO(data))
        return info.channels, info.frames
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        import av

        with av.open(io.BytesIO(data)) as container:
            return container.streams.audio[0].codec_context.channels, round(duration_ms * rate / 1000)


def _matches(member: str, sample_id: str) -> bool:
    """Whether lhotse's Shar reader pairs the tar member `member` with the cut `sample_id` (it
    compares the member's path without its extension, which folds `a//b` and `a/./b`)."""
    path = PurePosixPath(member)
    return str(path.parent / path.stem) == sample_id


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _gzip_lines(path: Path) -> Iterator[io.TextIOWrapper]:
    """A gzip text file with no timestamp in its header: the same rows give the same bytes."""
    with path.open("wb") as file, gzip.GzipFile(filename="", mode="wb", fileobj=file, mtime=0) as packed, \
            io.TextIOWrapper(packed, encoding="utf-8") as lines:
        yield lines
