"""Documents of whole recordings (`interleave.context = "recording"`): consecutive utterances of
one recording joined, in order, into one sample.

On the workers, per partition: each usable utterance becomes a member row (DIR/interleave/) that
holds its chunks, cut as utterance context cuts them, each with its text, word count and units.
Then, once every partition is committed, a shuffle keyed by recording: each partition's members
go into hash buckets of their recording (one Parquet row group per bucket), and one task per
bucket reads that bucket of every partition, sorts it by recording and place, cuts it into
documents (`document_starts`) and renders them. A document's utterance boundaries are chunk
boundaries, so speech spans run across them at either granularity. Buckets are named and filled
by the recordings alone, and a document's random stream comes from the seed and its first
utterance id, so DIR/documents/ (one committed partition per bucket) and the shards made from it
are the same bytes however the input was partitioned. The driver holds partition and bucket
names only.
"""

import functools
import hashlib
import json
import math
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sylm_data.documents import publish, spans
from sylm_data.documents.render import segment_texts
from sylm_data.documents.utterances import read_batch, sample_rows, utterance_chunks
from sylm_data.languages import word_joiner
from sylm_data.pipeline.output import OutputLayout, read_rows
from sylm_data.schemas import sample, utterance

DOCUMENTS = "documents"  # DIR/documents/: the assembled document rows, one committed partition per bucket
SHUFFLE = "_shuffle"
BUCKET = "bucket"
_quoted = json.encoder.encode_basestring


def member_rows(batch: pa.Table, config, stage: str) -> pa.Table:
    """One member row per usable utterance: its chunks as JSON `[[text, words, "u,u,…"], …]` (the
    units already as the text a speech segment holds) and its place in its recording."""
    read = read_batch(batch, config.tolerance_ms, stage)
    utterances, rows = read.utterances, read.rows
    chunked = utterance_chunks(utterances, rows, config.granularity)
    lengths = chunked.end_unit - chunked.first_unit
    starts = utterances.unit_bounds[chunked.rows] + chunked.first_unit
    flat = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    unit_texts = pc.binary_join(pa.ListArray.from_arrays(offsets, pc.cast(utterances.unit_ids.take(flat), pa.string())), ",")
    chunks = [f"[{_quoted(text)},{words},\"{units}\"]" for text, words, units in
              zip(segment_texts(utterances, chunked), chunked.words.tolist(), unit_texts.to_pylist())]
    per_row = np.bincount(np.searchsorted(rows, chunked.rows), minlength=len(rows))
    bounds = np.concatenate([[0], np.cumsum(per_row)]).tolist()
    members = ["[" + ",".join(chunks[bounds[i]:bounds[i + 1]]) + "]" for i in range(len(rows))]
    table, taken = read.table, pa.array(rows)
    return sample_rows(read, {
        sample.ROW_KIND: [sample.MEMBER] * len(rows), sample.ROW_JSON: members,
        sample.ROW_SPEECH_WORDS: np.zeros(len(rows), np.int64), sample.ROW_UNITS: utterances.unit_sizes[rows],
        sample.ROW_RECORDING: table[utterance.RECORDING].take(taken),
        sample.ROW_RECORDING_START_MS: table[utterance.RECORDING_START_MS].take(taken),
        sample.ROW_DURATION_MS: table[utterance.DURATION_MS].take(taken),
        sample.ROW_SEGMENT_INDEX: table[utterance.SEGMENT_INDEX].take(taken),
        sample.ROW_SPEAKER: table[utterance.SPEAKER].take(taken)})


class Place(NamedTuple):
    """Where a member sits: what decides whether it goes on its predecessor's document."""
    recording: str | None
    start_ms: int | None
    duration_ms: int
    segment_index: int | None
    speaker: str | None
    language: str


def document_starts(places: list[Place], max_document_ms: int, max_gap_ms: int, same_speaker: bool) -> list[bool]:
    """For members sorted by recording and place: whether each one opens a new document. It does at
    a new recording (or none), at a segment index that is not its predecessor's plus one (a
    segment missing or rejected), after a silence over `max_gap_ms` where start times are known,
    at another language, at another speaker when `same_speaker`, and where the document's audio
    would pass `max_document_ms`."""
    starts, audio_ms = [], 0
    for index, place in enumerate(places):
        before = places[index - 1] if index else None
        opens = (before is None or place.recording is None or place.recording != before.recording
                 or place.language != before.language
                 or (place.segment_index is not None and before.segment_index is not None
                     and place.segment_index != before.segment_index + 1)
                 or (place.start_ms is not None and before.start_ms is not None
                     and place.start_ms - (before.start_ms + before.duration_ms) > max_gap_ms)
                 or (same_speaker and place.speaker != before.speaker)
                 or audio_ms + place.duration_ms > max_document_ms)
        audio_ms = place.duration_ms if opens else audio_ms + place.duration_ms
        starts.append(opens)
    return starts


# (keys, chunk words, each chunk's document) -> (each document's kind, each chunk's speech flag)
ChooseSpeech = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def render_documents(ids: list[str], language: list[str], members: list[list], starts: list[bool], seed: int,
                     choose: ChooseSpeech) -> list[dict]:
    """The documents of members in order (`members[i]`: its chunks `[text, words, units text]`;
    `starts`: `document_starts`): per document its key (first member id), the ids it holds, its
    kind, JSON, words, speech words and units."""
    owner = np.cumsum(starts) - 1
    firsts = np.flatnonzero(starts)
    keys = spans.stream_keys(seed, [ids[first] for first in firsts.tolist()])
    chunk_owner = np.repeat(owner, [len(chunks) for chunks in members])
    chunks = [chunk for chunks in members for chunk in chunks]
    kinds, speech = choose(keys, np.array([chunk[1] for chunk in chunks], np.int64), chunk_owner)
    chunk_bounds = np.concatenate([[0], np.cumsum(np.bincount(chunk_owner, minlength=len(firsts)))]).tolist()
    member_bounds = np.concatenate([firsts, [len(ids)]]).tolist()
    documents = []
    for number, first in enumerate(firsts.tolist()):
        segments, runs_speech, words, speech_words, units = [], [], 0, 0, 0
        for at in range(chunk_bounds[number], chunk_bounds[number + 1]):
            text, count, unit_text = chunks[at]
            spoken = bool(speech[at])
            words += count
            if spoken:
                speech_words += count
                units += unit_text.count(",") + 1 if unit_text else 0
            if runs_speech and runs_speech[-1] == spoken:
                segments[-1].append(unit_text if spoken else text)
            else:
                runs_speech.append(spoken)
                segments.append([unit_text if spoken else text])
        kind = str(kinds[number])
        if kind == "interleaved" and len(runs_speech) == 1:  # no span fitted, or one chunk: a plain sample
            kind = "speech" if runs_speech[0] else "text"
        joiner = word_joiner(language[first])
        rendered = [('{"modality":"speech","text":null,"units":[' + ",".join(part for part in parts if part) + "]}")
                    if spoken else '{"modality":"text","text":' + _quoted(joiner.join(parts)) + ',"units":null}'
                    for parts, spoken in zip(segments, runs_speech)]
        held = ids[first:member_bounds[number + 1]]
        document = ('{"segments":[' + ",".join(rendered) + '],"kind":"' + kind + '","language":' + _quoted(language[first])
                    + ',"source_id":' + _quoted(held[0]) + ',"source_ids":[' + ",".join(map(_quoted, held))
                    + '],"synthetic":null}')
        documents.append({"key": held[0], "first": first, "kind": kind, "json": document, "words": words,
                          "speech_words": speech_words, "units": units})
    return documents


def bucket_count(members: int, members_per_bucket: int) -> int:
    return max(1, math.ceil(members / members_per_bucket))


def bucket_name(bucket: int, buckets: int) -> str:
    return f"documents-{bucket:05d}-of-{buckets:05d}"


def shuffle_partition(item: tuple[str, str], folder: str, shuffle_dir: str, buckets: int) -> None:
    """On a worker: one partition's member rows into `shuffle_dir/<partition>.parquet`, sorted by
    bucket, one row group per bucket (so that a bucket's task reads only its own)."""
    partition, _ = item
    target = Path(shuffle_dir) / f"{partition}.parquet"
    if target.exists():
        return
    table = read_rows(Path(folder) / partition)
    if not table.num_rows:
        return
    recordings = table[sample.ROW_RECORDING].to_pylist()
    keys = [recording if recording is not None else key for recording, key in zip(recordings, table[sample.ROW_KEY].to_pylist())]
    bucket = np.array([zlib.crc32(key.encode()) % buckets for key in keys], np.int32)
    table = table.append_column(BUCKET, pa.array(bucket)).take(np.argsort(bucket, kind="stable"))
    partial = target.with_name(f".{target.name}.partial")
    with pq.ParquetWriter(partial, table.schema) as writer:
        for value in np.unique(bucket).tolist():
            writer.write_table(table.filter(pc.equal(table[BUCKET], value)))
    os.replace(partial, target)


_ORDER = [(name, "ascending", "at_end") for name in (sample.ROW_RECORDING, sample.ROW_SEGMENT_INDEX,
                                                     sample.ROW_RECORDING_START_MS, sample.ROW_KEY)]


def assemble_bucket(bucket: int, shuffle_dir: str, target: str, buckets: int, stamp: str, config_hash: str, seed: int,
                    limits: tuple[int, int, bool], choose: ChooseSpeech) -> int:
    """On a worker: the documents of one bucket, from that bucket of every partition, committed as
    DIR/documents/<bucket name>/ with its marker; how many documents."""
    files = sorted(Path(shuffle_dir).glob("*.parquet"))
    parts = [pq.read_table(path, filters=[(BUCKET, "=", bucket)]).drop_columns([BUCKET]) for path in files]
    table = pa.concat_tables(parts) if parts else pa.table({})
    name, layout = bucket_name(bucket, buckets), OutputLayout(Path(target).parent)
    rows = pa.Table.from_pylist([], schema=sample.ROW_SCHEMA)
    if table.num_rows:
        table = table.take(pc.sort_indices(table, sort_keys=_ORDER))
        columns = {name: table[name].to_pylist() for name in (
            sample.ROW_KEY, sample.ROW_LANGUAGE, sample.ROW_RECORDING, sample.ROW_RECORDING_START_MS,
            sample.ROW_DURATION_MS, sample.ROW_SEGMENT_INDEX, sample.ROW_SPEAKER)}
        places = [Place(*values) for values in zip(*(columns[name] for name in (
            sample.ROW_RECORDING, sample.ROW_RECORDING_START_MS, sample.ROW_DURATION_MS, sample.ROW_SEGMENT_INDEX,
            sample.ROW_SPEAKER, sample.ROW_LANGUAGE)))]
        starts = document_starts(places, *limits)
        members = [json.loads(member) for member in table[sample.ROW_JSON].to_pylist()]
        documents = render_documents(columns[sample.ROW_KEY], columns[sample.ROW_LANGUAGE], members, starts, seed, choose)
        firsts = pa.array([document["first"] for document in documents])
        durations = np.add.reduceat(np.array(columns[sample.ROW_DURATION_MS], np.int64), firsts.to_numpy())
        heads = table.take(firsts)
        rows = pa.table({
            sample.ROW_KEY: [document["key"] for document in documents], sample.ROW_SOURCE: heads[sample.ROW_SOURCE],
            sample.ROW_KIND: [document["kind"] for document in documents], sample.ROW_LANGUAGE: heads[sample.ROW_LANGUAGE],
            sample.ROW_JSON: [document["json"] for document in documents],
            **{column: [document[key] for document in documents] for column, key in (
                (sample.ROW_WORDS, "words"), (sample.ROW_SPEECH_WORDS, "speech_words"), (sample.ROW_UNITS, "units"))},
            sample.ROW_TOKENIZER: heads[sample.ROW_TOKENIZER], sample.ROW_RECORDING: heads[sample.ROW_RECORDING],
            sample.ROW_RECORDING_START_MS: heads[sample.ROW_RECORDING_START_MS], sample.ROW_DURATION_MS: durations,
            sample.ROW_SEGMENT_INDEX: heads[sample.ROW_SEGMENT_INDEX], sample.ROW_SPEAKER: heads[sample.ROW_SPEAKER],
        }, schema=sample.ROW_SCHEMA)
    folder = Path(target) / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if rows.num_rows:
        pq.write_table(rows, folder / "documents.parquet")
    marker = {"run_id": stamp, "config_hash": config_hash, "rows_out": rows.num_rows, "members": table.num_rows}
    done = layout.done_dir(Path(target).name)
    done.mkdir(parents=True, exist_ok=True)
    partial = done / f".{name}.json.partial"
    partial.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(partial, done / f"{name}.json")
    return rows.num_rows


def assemble(folder: Path, target: Path, config, parallel, choose: ChooseSpeech) -> Path:
    """The documents of the member rows committed in `folder` (DIR/interleave/) into `target`
    (DIR/documents/), through the shuffle by recording; buckets already assembled from the same
    partitions are kept. Returns `target`, a folder of committed sample rows."""
    markers = OutputLayout(folder.parent).markers(folder.name)
    buckets = bucket_count(sum(marker["rows_out"] for marker in markers.values()), config.members_per_bucket)
    config_hash = publish.config_digest(config)
    inputs = json.dumps([buckets, config_hash, sorted((partition, marker["run_id"]) for partition, marker in markers.items())])
    stamp = hashlib.sha256(inputs.encode()).hexdigest()[:16]
    layout = OutputLayout(target.parent)
    names = [bucket_name(bucket, buckets) for bucket in range(buckets)]
    done = layout.markers(target.name)
    if all(done.get(name, {}).get("run_id") == stamp for name in names):
        return target
    shuffle_dir = target / SHUFFLE / stamp
    shuffle_dir.mkdir(parents=True, exist_ok=True)
    shuffle = functools.partial(shuffle_partition, folder=str(folder), shuffle_dir=str(shuffle_dir), buckets=buckets)
    parallel(shuffle, sorted((partition, marker["run_id"]) for partition, marker in markers.items()))
    pending = [bucket for bucket, name in enumerate(names) if done.get(name, {}).get("run_id") != stamp]
    limits = (config.max_document_ms, config.max_gap_ms, config.same_speaker)
    parallel(functools.partial(assemble_bucket, shuffle_dir=str(shuffle_dir), target=str(target), buckets=buckets, stamp=stamp,
                               config_hash=config_hash, seed=config.seed, limits=limits, choose=choose), pending)
    for stale in set(layout.markers(target.name)) - set(names):
        layout.uncommit(stale, target.name)
        shutil.rmtree(target / stale, ignore_errors=True)
    shutil.rmtree(target / SHUFFLE, ignore_errors=True)
    return target
