"""Documents of whole recordings (`interleave.context = "recording"`): consecutive utterances of
one recording joined, in order, into one sample.

On the workers, per partition: each usable utterance becomes a member row (DIR/interleave/) that
holds its chunks, cut as utterance context cuts them, each with its text, word count and units.
Then, once every partition is committed, a shuffle keyed by recording: each partition's members
go into hash buckets of their recording (one record batch per bucket of an Arrow IPC file), and
one task per bucket reads that bucket of every partition, sorts it by recording and place, cuts it into
documents (`document_starts`), renders them, writes their shards and commits their rows (without
the JSON, which only the shards hold). A document's utterance boundaries are chunk boundaries, so
speech spans run across them at either granularity. Buckets are named and filled by the
recordings alone, and a document's random stream comes from the seed and its first utterance id,
so DIR/documents/ (one committed partition per bucket) and the shards are the same bytes however
the input was partitioned. The driver holds partition and bucket names only.
"""

import functools
import hashlib
import json
import math
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.compiled import compiled
from sylm_data.documents import publish, spans
from sylm_data.documents.render import SpeechUnits, TextPieces, documents_json, int_lists, range_positions
from sylm_data.documents.utterances import read_batch, sample_rows
from sylm_data.languages import word_joiner
from sylm_data.pipeline.output import OutputLayout, read_bucket, read_rows, sorted_rows, write_buckets, write_parquet
from sylm_data.pipeline.shards import read_manifest, samples_per_shard
from sylm_data.schemas import sample, utterance

DOCUMENTS = "documents"  # DIR/documents/: the assembled document rows, one committed partition per bucket
SHUFFLE = "_shuffle"


def member_rows(batch: pa.Table, config, stage: str) -> pa.Table:
    """One member row per usable utterance: its chunks (cut as utterance context cuts them), word
    offsets, units and transcript, and its place in its recording."""
    read = read_batch(batch, config.tolerance_ms, config.granularity, stage)
    utterances, rows = read.utterances, read.rows
    chunk_words, chunk_units, per_row = spans.chunk_sizes(utterances.cuts, utterances.word_sizes, utterances.unit_sizes, rows)
    word_sizes, unit_sizes = utterances.word_sizes[rows], utterances.unit_sizes[rows]
    offsets, units = utterances.offset_table, utterances.unit_ids
    table = read.table.select([utterance.TEXT, utterance.RECORDING, utterance.RECORDING_START_MS, utterance.DURATION_MS,
                               utterance.SEGMENT_INDEX, utterance.SPEAKER])
    if len(rows) < len(utterances.ids):  # else the rows' ranges are the whole flat arrays, and the rows the whole batch
        offsets = offsets[range_positions(utterances.offset_bounds[rows], word_sizes + 1)]
        units = units.take(range_positions(utterances.unit_bounds[rows], unit_sizes))
        table = table.take(pa.array(rows))
    return sample_rows(read, {
        sample.ROW_KIND: pa.repeat(pa.scalar(sample.MEMBER), len(rows)), sample.ROW_JSON: table[utterance.TEXT],
        sample.ROW_SPEECH_WORDS: np.zeros(len(rows), np.int64), sample.ROW_UNITS: unit_sizes,
        sample.ROW_RECORDING: table[utterance.RECORDING], sample.ROW_RECORDING_START_MS: table[utterance.RECORDING_START_MS],
        sample.ROW_DURATION_MS: table[utterance.DURATION_MS], sample.ROW_SEGMENT_INDEX: table[utterance.SEGMENT_INDEX],
        sample.ROW_SPEAKER: table[utterance.SPEAKER],
        sample.ROW_CHUNK_WORDS: int_lists(chunk_words, per_row), sample.ROW_CHUNK_UNITS: int_lists(chunk_units, per_row),
        sample.ROW_WORD_OFFSETS: int_lists(offsets, word_sizes + 1), sample.ROW_UNIT_IDS: int_lists(units, unit_sizes)})


class Members(NamedTuple):
    """Member rows read flat: member m's chunks are chunk_bounds[m]:chunk_bounds[m + 1] of the
    chunk arrays; its word offsets and units are ranges of the flat arrays likewise."""
    texts: pa.Array  # the transcripts
    chunk_bounds: np.ndarray
    chunk_words: np.ndarray
    chunk_units: np.ndarray
    offsets: np.ndarray  # flat word offsets, words + 1 per member
    offset_bounds: np.ndarray
    units: pa.Array  # flat
    unit_bounds: np.ndarray


def read_members(members: pa.Table) -> Members:
    def flat(name: str) -> tuple[pa.Array, np.ndarray]:  # the values as stored (int32), not copied
        lists = members[name].combine_chunks()
        offsets = lists.offsets.to_numpy().astype(np.int64)
        return pc.list_flatten(lists), offsets - offsets[0]

    (chunk_words, chunk_bounds), (chunk_units, _), (offsets, offset_bounds), (units, unit_bounds) = (
        flat(name) for name in sample.ROW_MEMBER_COLUMNS)
    return Members(members[sample.ROW_JSON].combine_chunks(), chunk_bounds, chunk_words.to_numpy(), chunk_units.to_numpy(),
                   offsets.to_numpy(), offset_bounds, units, unit_bounds)


def document_starts(places: pa.Table, max_document_ms: int, max_gap_ms: int, same_speaker: bool) -> np.ndarray:
    """For members sorted by recording and place (`places`: their recording, start, duration,
    segment index, speaker and language columns), whether each one opens a new document. It does at
    a new recording (or none), at a segment index that is not its predecessor's plus one (a
    segment missing or rejected), after a silence over `max_gap_ms` where start times are known,
    at another language, at another speaker when `same_speaker`, and where the document's audio
    would pass `max_document_ms`."""
    count = places.num_rows
    if not count:
        return np.zeros(0, bool)

    def values(name: str) -> tuple[np.ndarray, np.ndarray]:
        column = places[name]
        return (pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64),
                pc.is_valid(column).to_numpy(zero_copy_only=False))

    def changed(name: str) -> np.ndarray:  # null is equal to null only
        column = places[name].combine_chunks()
        before, after = column.slice(0, count - 1), column.slice(1)
        differs = pc.fill_null(pc.not_equal(after, before), True).to_numpy(zero_copy_only=False)
        return differs & ~(pc.is_null(after).to_numpy(zero_copy_only=False) & pc.is_null(before).to_numpy(zero_copy_only=False))

    segment, has_segment = values(sample.ROW_SEGMENT_INDEX)
    start, has_start = values(sample.ROW_RECORDING_START_MS)
    duration, _ = values(sample.ROW_DURATION_MS)
    opens = np.ones(count, bool)
    opens[1:] = (changed(sample.ROW_RECORDING) | pc.is_null(places[sample.ROW_RECORDING]).to_numpy(zero_copy_only=False)[1:]
                 | changed(sample.ROW_LANGUAGE)
                 | (has_segment[1:] & has_segment[:-1] & (segment[1:] != segment[:-1] + 1))
                 | (has_start[1:] & has_start[:-1] & (start[1:] - (start[:-1] + duration[:-1]) > max_gap_ms)))
    if same_speaker:
        opens[1:] |= changed(sample.ROW_SPEAKER)
    # the length bound: greedy within each run the other rules leave, for the runs it splits
    firsts = np.flatnonzero(opens)
    totals = np.add.reduceat(duration, firsts)
    for first, end in zip(firsts[totals > max_document_ms].tolist(), np.append(firsts[1:], count)[totals > max_document_ms].tolist()):
        audio_ms = 0
        for index in range(first, end):
            if index > first and audio_ms + duration[index] > max_document_ms:
                opens[index], audio_ms = True, 0
            audio_ms += duration[index]
    return opens


# (keys, chunk words, each chunk's document, ascending) -> (each document's kind, each chunk's speech flag)
ChooseSpeech = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def render_documents(ids: pa.Array, languages: pa.Array, member_table: pa.Table, starts: np.ndarray, seed: int,
                     choose: ChooseSpeech) -> dict[str, list | np.ndarray]:
    """The documents of members in order (`ids`, `languages`: the members'; `member_table`: their
    member rows; `starts`: `document_starts`):
    each one's first member (its key), kind, JSON, words, speech words and units. Chunks of one
    modality in a row make one segment, across utterances too: units joined, texts joined by the
    language's word joiner. Over all the members at once, as utterance context renders a batch."""
    members = read_members(member_table)
    document_of = np.cumsum(starts) - 1
    firsts = np.flatnonzero(starts)
    count = len(firsts)
    taken_firsts = pa.array(firsts)
    first_languages = languages.take(taken_firsts)
    keys = spans.stream_keys(seed, ids.take(taken_firsts))
    owner = np.repeat(document_of, np.diff(members.chunk_bounds))
    kinds, speech = choose(keys, members.chunk_words, owner)
    (segment_speech, per_document, range_starts, range_lengths, ranges_per_segment, piece_rows, piece_starts, piece_ends,
     pieces_per_segment, text_owner, words, speech_words, units) = _segments(
        members.chunk_bounds, members.chunk_words, members.chunk_units, owner, np.asarray(speech, np.bool_), members.offsets,
        members.offset_bounds, members.unit_bounds, count)
    document_languages = first_languages.to_pylist()
    joiners = {language: word_joiner(language) for language in set(document_languages)}
    numbered = {joiner: number for number, joiner in enumerate(sorted(set(joiners.values())))}
    joiner_of_document = np.array([numbered[joiners[language]] for language in document_languages], np.int64)
    texts = TextPieces(members.texts, piece_rows, piece_starts, piece_ends, pieces_per_segment, joiner_of_document[text_owner],
                       list(numbered))
    kinds = np.asarray(kinds).astype(object)
    single = (kinds == "interleaved") & (per_document == 1)  # no span fitted, or one chunk: a plain sample
    first_segment = np.concatenate([[0], np.cumsum(per_document)[:-1]])
    kinds[single] = np.where(segment_speech[first_segment[single]], "speech", "text")
    documents = documents_json(SpeechUnits(members.units, range_starts, range_lengths, ranges_per_segment), texts, segment_speech,
                               per_document, kinds.tolist(), first_languages, ids, np.diff(np.append(firsts, len(ids))))
    return {"first": firsts, "kind": kinds.tolist(), "json": documents, "words": words, "speech_words": speech_words, "units": units}


@compiled
def _segments(chunk_bounds, chunk_words, chunk_units, owner, speech, offsets, offset_bounds, unit_bounds, documents):
    """One pass over the members' chunks in order (member m's: chunk_bounds[m]:chunk_bounds[m + 1];
    chunk c in document owner[c], speech where speech[c]): chunks of one modality in a row of one
    document make a segment. Returns each segment's modality and each document's segment count;
    the speech segments' unit ranges (into the flat units) and ranges per segment; the text
    segments' pieces (member, start and end character: a run of a segment's text chunks within
    one member), pieces per segment and document; and each document's words, speech words and
    units."""
    chunks = len(chunk_words)
    segment_speech, per_document = np.empty(chunks, np.bool_), np.zeros(documents, np.int64)
    range_starts, range_lengths, ranges_per_segment = np.empty(chunks, np.int64), np.empty(chunks, np.int64), np.empty(chunks, np.int64)
    piece_rows, piece_starts, piece_ends = np.empty(chunks, np.int64), np.empty(chunks, np.int64), np.empty(chunks, np.int64)
    pieces_per_segment, text_owner = np.empty(chunks, np.int64), np.empty(chunks, np.int64)
    words, speech_words, units = np.zeros(documents, np.int64), np.zeros(documents, np.int64), np.zeros(documents, np.int64)
    segments = spoken = written = pieces = ranges = 0
    for member in range(len(chunk_bounds) - 1):
        word, unit, base = 0, 0, offset_bounds[member]  # the chunk's first word and unit within its member
        for chunk in range(chunk_bounds[member], chunk_bounds[member + 1]):
            document = owner[chunk]
            opens = chunk == 0 or document != owner[chunk - 1] or speech[chunk] != speech[chunk - 1]
            if opens:
                segment_speech[segments] = speech[chunk]
                segments += 1
                per_document[document] += 1
            if speech[chunk]:
                if opens:
                    ranges_per_segment[spoken] = 0
                    spoken += 1
                range_starts[ranges], range_lengths[ranges] = unit_bounds[member] + unit, chunk_units[chunk]
                ranges += 1
                ranges_per_segment[spoken - 1] += 1
                speech_words[document] += chunk_words[chunk]
                units[document] += chunk_units[chunk]
            else:
                if opens:
                    pieces_per_segment[written], text_owner[written] = 0, document
                    written += 1
                end = offsets[base + word + chunk_words[chunk]]
                if opens or chunk == chunk_bounds[member]:  # a new piece: a new segment, or the segment goes on in this member
                    piece_rows[pieces], piece_starts[pieces], piece_ends[pieces] = member, offsets[base + word], end
                    pieces += 1
                    pieces_per_segment[written - 1] += 1
                else:
                    piece_ends[pieces - 1] = end
            words[document] += chunk_words[chunk]
            word += chunk_words[chunk]
            unit += chunk_units[chunk]
    return (segment_speech[:segments], per_document, range_starts[:ranges], range_lengths[:ranges], ranges_per_segment[:spoken],
            piece_rows[:pieces], piece_starts[:pieces], piece_ends[:pieces], pieces_per_segment[:written], text_owner[:written],
            words, speech_words, units)


def bucket_count(members: int, members_per_bucket: int) -> int:
    return max(1, math.ceil(members / members_per_bucket))


def bucket_name(bucket: int, buckets: int) -> str:
    return f"documents-{bucket:05d}-of-{buckets:05d}"


# what assembling reads of a member row: not its kind or counts, which its document's replace
_ASSEMBLED = [name for name in sample.ROW_SCHEMA.names
              if name not in (sample.ROW_KIND, sample.ROW_WORDS, sample.ROW_SPEECH_WORDS, sample.ROW_UNITS)]


def shuffle_partition(item: tuple[str, str], folder: str, shuffle_dir: str, buckets: int) -> None:
    """On a worker: one partition's member rows into `shuffle_dir/<partition>.arrow`, one record
    batch per bucket of their recording (`write_buckets`)."""
    partition, _ = item
    target = Path(shuffle_dir) / f"{partition}.arrow"
    if target.exists():
        return
    table = read_rows(Path(folder) / partition, _ASSEMBLED)
    if not table.num_rows:
        return
    keys = pc.coalesce(table[sample.ROW_RECORDING], table[sample.ROW_KEY]).combine_chunks().dictionary_encode()
    hashes = np.array([zlib.crc32(key.encode()) % buckets for key in keys.dictionary.to_pylist()], np.int64)
    write_buckets(table, hashes[keys.indices.to_numpy()], buckets, target)


# what a document takes of its first member's row
_HEAD_COLUMNS = [sample.ROW_KEY, sample.ROW_SOURCE, sample.ROW_LANGUAGE, sample.ROW_TOKENIZER, sample.ROW_RECORDING,
                 sample.ROW_RECORDING_START_MS, sample.ROW_SEGMENT_INDEX, sample.ROW_SPEAKER]
# the document columns whose values repeat from row to row
_REPEATING = [sample.ROW_SOURCE, sample.ROW_KIND, sample.ROW_LANGUAGE, sample.ROW_TOKENIZER, sample.ROW_SPEAKER]
_ORDER = [(name, "ascending", "at_end") for name in (sample.ROW_RECORDING, sample.ROW_SEGMENT_INDEX,
                                                     sample.ROW_RECORDING_START_MS, sample.ROW_KEY)]
# what `document_starts` and the members' order take
_PLACE_COLUMNS = [sample.ROW_KEY, sample.ROW_RECORDING, sample.ROW_RECORDING_START_MS, sample.ROW_DURATION_MS,
                  sample.ROW_SEGMENT_INDEX, sample.ROW_SPEAKER, sample.ROW_LANGUAGE]


def _bucket_members(bucket: int, shuffle_dir: str, columns: list[str] | None = None) -> pa.Table:
    """That bucket of every partition's shuffle file (those of `columns`), sorted by recording and place."""
    parts = [read_bucket(path, bucket) for path in sorted(Path(shuffle_dir).glob("*.arrow"))]
    table = pa.concat_tables([part.select(columns) if columns else part for part in parts]) if parts else pa.table({})
    return sorted_rows(table, _ORDER) if table.num_rows else table


def count_documents(bucket: int, shuffle_dir: str, limits: tuple[int, int, bool]) -> int:
    """On a worker: how many documents one bucket's members make (`document_starts`), nothing rendered."""
    table = _bucket_members(bucket, shuffle_dir, _PLACE_COLUMNS)
    return int(document_starts(table, *limits).sum()) if table.num_rows else 0


def assemble_bucket(bucket: int, shuffle_dir: str, target: str, buckets: int, stamp: str, config_hash: str, seed: int,
                    limits: tuple[int, int, bool], choose: ChooseSpeech, shards: str, shard_bytes: int, shard_stamp: dict) -> int:
    """On a worker: the documents of one bucket, from that bucket of every partition: their shards
    (the bucket's group in `shards`, stamped `shard_stamp`, as `publish` writes a partition's),
    then their rows without the JSON (`sample.DOCUMENT_SCHEMA`), committed as
    DIR/documents/<bucket name>/ with its marker; how many documents."""
    name, layout = bucket_name(bucket, buckets), OutputLayout(Path(target).parent)
    layout.uncommit(name, Path(target).name)  # a committed bucket rebuilt for its shards must not look done half way
    table = _bucket_members(bucket, shuffle_dir)
    rows = sample.ROW_SCHEMA.empty_table()
    if table.num_rows:
        starts = document_starts(table, *limits)
        documents = render_documents(table[sample.ROW_KEY].combine_chunks(), table[sample.ROW_LANGUAGE].combine_chunks(),
                                     table, starts, seed, choose)
        firsts = documents["first"]
        durations = np.add.reduceat(pc.fill_null(table[sample.ROW_DURATION_MS], 0).to_numpy(zero_copy_only=False), firsts)
        heads = table.select(_HEAD_COLUMNS).take(pa.array(firsts))
        rows = pa.table({
            sample.ROW_KEY: heads[sample.ROW_KEY], sample.ROW_SOURCE: heads[sample.ROW_SOURCE],
            sample.ROW_KIND: documents["kind"], sample.ROW_LANGUAGE: heads[sample.ROW_LANGUAGE],
            sample.ROW_JSON: documents["json"], sample.ROW_WORDS: documents["words"],
            sample.ROW_SPEECH_WORDS: documents["speech_words"], sample.ROW_UNITS: documents["units"],
            sample.ROW_TOKENIZER: heads[sample.ROW_TOKENIZER], sample.ROW_RECORDING: heads[sample.ROW_RECORDING],
            sample.ROW_RECORDING_START_MS: heads[sample.ROW_RECORDING_START_MS], sample.ROW_DURATION_MS: durations,
            sample.ROW_SEGMENT_INDEX: heads[sample.ROW_SEGMENT_INDEX], sample.ROW_SPEAKER: heads[sample.ROW_SPEAKER],
        } | {name: pa.nulls(len(firsts), sample.ROW_SCHEMA.field(name).type) for name in sample.ROW_MEMBER_COLUMNS},
            schema=sample.ROW_SCHEMA)
        rows = sorted_rows(rows, [(sample.ROW_KEY, "ascending")])  # the shards' order
    publish.write_sample_shards(rows, Path(shards), name, shard_bytes, shard_stamp)
    folder = Path(target) / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if rows.num_rows:  # dictionaries only where values repeat
        write_parquet(rows.select(sample.DOCUMENT_SCHEMA.names).cast(sample.DOCUMENT_SCHEMA), folder / "documents.parquet",
                      compression="zstd", compression_level=1, use_dictionary=_REPEATING)
    layout.write_marker(Path(target).name, name, {"run_id": stamp, "config_hash": config_hash, "rows_out": rows.num_rows,
                                                  "members": table.num_rows})
    return rows.num_rows


def assemble(folder: Path, target: Path, shards: Path, config, parallel, choose: ChooseSpeech) -> dict[str, dict]:
    """The documents of the member rows committed in `folder` (DIR/interleave/): their rows into
    `target` (DIR/documents/) and their shards into `shards`, a group per bucket, through the
    shuffle by recording. A bucket whose documents are committed from the same partitions and
    whose shards are written is kept. With `min_shards` above 1, whose cap on samples per shard
    needs every bucket's document count, the buckets to assemble are counted first. Returns each
    bucket's shard stamp (for `publish.publish_stamped`)."""
    markers = OutputLayout(folder.parent).markers(folder.name)
    if not any(marker["rows_out"] for marker in markers.values()):
        raise ValueError(f"{folder} holds no usable utterances: nothing to shard")
    buckets = bucket_count(sum(marker["rows_out"] for marker in markers.values()), config.members_per_bucket)
    config_hash = publish.config_digest(config)
    inputs = json.dumps([buckets, config_hash, sorted((partition, marker["run_id"]) for partition, marker in markers.items())])
    stamp = hashlib.sha256(inputs.encode()).hexdigest()[:16]
    layout = OutputLayout(target.parent)
    names = [bucket_name(bucket, buckets) for bucket in range(buckets)]
    done = layout.markers(target.name)
    committed = {name: done[name]["rows_out"] for name in names if done.get(name, {}).get("run_id") == stamp}
    shuffle_dir = target / SHUFFLE / stamp
    limits = (config.max_document_ms, config.max_gap_ms, config.same_speaker)

    def shuffle() -> None:
        shuffle_dir.mkdir(parents=True, exist_ok=True)
        parallel(functools.partial(shuffle_partition, folder=str(folder), shuffle_dir=str(shuffle_dir), buckets=buckets),
                 sorted((partition, marker["run_id"]) for partition, marker in markers.items()))

    uncommitted = [bucket for bucket, name in enumerate(names) if name not in committed]
    if uncommitted:
        shuffle()
    cap = None
    if config.min_shards > 1:
        count = functools.partial(count_documents, shuffle_dir=str(shuffle_dir), limits=limits)
        counted = parallel(count, uncommitted) if uncommitted else []
        cap = samples_per_shard(sum(committed.values()) + sum(counted), config.min_shards)
    shard_stamp = publish.partition_stamp(stamp, config_hash, cap)
    unwritten_shards = [bucket for bucket, name in enumerate(names)
                        if name in committed and (read_manifest(shards, name) or {}).get("stamp") != shard_stamp]
    if unwritten_shards and not uncommitted:
        shuffle()
    pending = sorted(uncommitted + unwritten_shards)
    if pending:
        parallel(functools.partial(assemble_bucket, shuffle_dir=str(shuffle_dir), target=str(target), buckets=buckets, stamp=stamp,
                                   config_hash=config_hash, seed=config.seed, limits=limits, choose=choose, shards=str(shards),
                                   shard_bytes=config.shard_bytes, shard_stamp=shard_stamp), pending)
    for stale in set(layout.markers(target.name)) - set(names):
        layout.uncommit(stale, target.name)
        shutil.rmtree(target / stale, ignore_errors=True)
    shutil.rmtree(target / SHUFFLE, ignore_errors=True)
    return dict.fromkeys(names, shard_stamp)


def unwritten(item: tuple[str, dict]) -> None:
    """`assemble` leaves no bucket's shards unwritten: publishing found one."""
    raise RuntimeError(f"the shards of documents bucket {item[0]} are not written (stamp {item[1]}): run the stage again")
