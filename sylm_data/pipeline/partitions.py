"""Partitions into in-flight batches: source records for ingest, stage output for later stages.

Whatever goes wrong inside a partition becomes reject rows, never a failed run: a sample the reader
could not unpack, a duplicate id or transcript, an input holding no sample, or a reader that stopped half way.
"""

import hashlib
import json
import traceback
from collections.abc import Collection, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sylm_data.pipeline import duplicates
from sylm_data.schemas import source_record, stream
from sylm_data.schemas.reject import Reason
from sylm_data.sources import READERS, Partition, Record, SourceError, fields

SOURCE_SCHEMA = stream.in_flight(source_record.SCHEMA)


MAX_ID_CHARS = 80  # a shard member is `<id>.<extension>`: within a plain tar header's 100-character name


def record_id(source: str, key: str) -> str:
    """Stable, injective id from source and key, usable as a WebDataset key: '%' and '.' are
    percent-escaped (WebDataset splits member names at the first dot); a longer id keeps its
    head and ends with a hash of the whole."""
    whole = f"{source}:{key.replace('%', '%25').replace('.', '%2E')}"
    if len(whole) <= MAX_ID_CHARS:
        return whole
    digest = hashlib.sha1(whole.encode()).hexdigest()[:20]
    return f"{whole[:MAX_ID_CHARS - len(digest) - 1]}~{digest}"


def source_row(partition: Partition, record: Record, reader_stage: str) -> dict:
    """A reader's record as an in-flight `source_record` row (SOURCE_SCHEMA)."""
    rejected = record.reject is not None
    return {
        source_record.ID: record_id(partition.source, record.key),
        source_record.SOURCE: partition.source,
        source_record.AUDIO: None if rejected else record.audio,
        source_record.AUDIO_NAME: record.audio_name,
        source_record.TEXT: record.text,
        source_record.LANGUAGE: record.language,
        source_record.SPEAKER: record.speaker,
        source_record.QUALITY: record.quality,
        source_record.DECLARED_DURATION_MS: record.declared_duration_ms,
        source_record.RECORDING: None if record.recording is None else record_id(partition.source, record.recording),
        source_record.RECORDING_START_MS: record.recording_start_ms,
        source_record.SEGMENT_INDEX: record.segment_index,
        source_record.META: json.dumps(record.meta, ensure_ascii=False, sort_keys=True) if record.meta else None,
        stream.PARTITION: partition.id,
        stream.PARTITION_TOTAL: 0,
        stream.REJECT_STAGE: reader_stage if rejected else None,
        stream.REJECT_REASON: record.reject.value if rejected else None,
        stream.REJECT_DETAIL: record.detail,
    }


def _records(partition: Partition, subsets: Collection[str] = ()) -> Iterator[Record]:
    """The reader's records, each checked (`sources.fields`), then one reject for the partition if
    the reader broke down. `subsets` (ingest.subsets, YODAS2 only): the reader rejects the records
    of a partition from another subset without decoding its audio."""
    reader = READERS[partition.source]
    try:
        for record in reader.read(partition, subsets=subsets) if subsets else reader.read(partition):
            yield fields.checked(record)
    except SourceError as error:
        yield Record(key=f"{partition.id}#unreadable", reject=Reason.UNREADABLE_INPUT, detail=str(error)[:300])
    except Exception as error:  # a reader bug must not stop the run either: record it, show it, go on
        traceback.print_exc()
        detail = f"{type(error).__name__}: {error}"[:300]
        yield Record(key=f"{partition.id}#unreadable", reject=Reason.UNREADABLE_INPUT, detail=detail)


def source_listing(partition: Partition, subsets: Collection[str] = ()) -> list[tuple[str, str | None, str | None]]:
    """(id, transcript, language) of every record the reader gives for `partition` (what
    `read_source_partition` will emit); the transcript is None where the reader rejected the record."""
    return [(record_id(partition.source, record.key), None if record.reject is not None else record.text, record.language)
            for record in _records(partition, subsets)]


def source_ids(partition: Partition, subsets: Collection[str] = ()) -> list[str]:
    """The ids of every record the reader gives for `partition` (what `read_source_partition` will emit)."""
    return [sample_id for sample_id, _, _ in source_listing(partition, subsets)]


def read_source_partition(partition: Partition, reader_stage: str, batch_rows: int,
                          first_elsewhere: dict[str, str] | None = None,
                          subsets: Collection[str] = (),
                          near_duplicate_of: dict[str, list[str]] | None = None) -> Iterator[pa.Table]:
    """In-flight source_record tables of at most `batch_rows` rows; the last carries the total.
    An id seen earlier in the partition, or in `first_elsewhere` (id -> the partition holding its
    first occurrence), is a `duplicate_id` reject; one in `near_duplicate_of` (id -> [kept id, its
    partition]) a `near_duplicate` reject. `subsets`: see `_records`."""
    first_elsewhere = first_elsewhere or {}
    near_duplicate_of = near_duplicate_of or {}
    seen: set[str] = set()
    batch: list[dict] = []
    total = 0
    for record in _records(partition, subsets):
        row = source_row(partition, record, reader_stage)
        sample_id = row[source_record.ID]
        if row[stream.REJECT_REASON] is None and (sample_id in seen or sample_id in first_elsewhere):
            detail = ("the id occurs earlier in this partition" if sample_id in seen
                      else f"{duplicates.ELSEWHERE}{first_elsewhere[sample_id]}")
            row.update({stream.REJECT_STAGE: reader_stage, stream.REJECT_REASON: Reason.DUPLICATE_ID.value,
                        stream.REJECT_DETAIL: detail, source_record.AUDIO: None})
        elif row[stream.REJECT_REASON] is None and sample_id in near_duplicate_of:
            kept, kept_partition = near_duplicate_of[sample_id]
            row.update({stream.REJECT_STAGE: reader_stage, stream.REJECT_REASON: Reason.NEAR_DUPLICATE.value,
                        stream.REJECT_DETAIL: f"a near-duplicate of {kept} (partition {kept_partition})",
                        source_record.AUDIO: None})
        seen.add(sample_id)
        total += 1
        if len(batch) == batch_rows:
            yield pa.Table.from_pylist(batch, schema=SOURCE_SCHEMA)
            batch = []
        batch.append(row)
    if total == 0:
        empty = Record(key=f"{partition.id}#empty", reject=Reason.EMPTY_INPUT, detail=f"{partition.path} holds no sample")
        batch.append(source_row(partition, empty, reader_stage))
        total = 1
    batch[-1][stream.PARTITION_TOTAL] = total
    yield pa.Table.from_pylist(batch, schema=SOURCE_SCHEMA)


def stage_partitions(stage_dir: Path) -> list[Partition]:
    """The committed partitions of a stage's output folder, as inputs to the next stage."""
    done = stage_dir / "_done"
    return [
        Partition(marker.stem, stage_dir.name, str(stage_dir / marker.stem))
        for marker in sorted(done.glob("*.json"))
    ]


def read_stage_partition(partition: Partition, contract: pa.Schema, batch_rows: int,
                         audio_from: str | None = None) -> Iterator[pa.Table]:
    """A committed partition of an earlier stage's output as in-flight batches of its contract;
    with `audio_from` (the ingest output folder), each row gets its audio back, by id, from the
    same partition there."""
    files = sorted(Path(partition.path).glob("*.parquet"))
    schema = stream.in_flight(contract)
    tables = (_joined(files, Path(audio_from) / partition.id, contract, batch_rows) if audio_from
              else _batches(files, contract, batch_rows))
    total = sum(pq.read_metadata(file).num_rows for file in files)
    emitted = 0
    for table in tables:
        emitted += table.num_rows
        envelope = {
            stream.PARTITION: pa.array([partition.id] * table.num_rows, pa.string()),
            stream.PARTITION_TOTAL: pa.array([0] * (table.num_rows - 1) + [total if emitted == total else 0], pa.int64()),
            stream.REJECT_STAGE: pa.nulls(table.num_rows, pa.string()),
            stream.REJECT_REASON: pa.nulls(table.num_rows, pa.string()),
            stream.REJECT_DETAIL: pa.nulls(table.num_rows, pa.string()),
        }
        if stream.AUDIO.name in schema.names and stream.AUDIO.name not in table.column_names:
            envelope[stream.AUDIO.name] = pa.nulls(table.num_rows, stream.AUDIO.type)  # not needed by this run
        for name, column in envelope.items():
            table = table.append_column(name, column)
        yield table.select(schema.names).cast(schema)
    if emitted != total:
        raise ValueError(f"{audio_from}/{partition.id} lacks the audio of {total - emitted} of {partition.path}'s rows: "
                         "the ingest output was changed after this stage ran; run ingest and this stage again")


def conformed(table: pa.Table, contract: pa.Schema) -> pa.Table:
    """Stored rows as `contract` types them; a nullable column the rows were written without (by an
    older version of their contract) is null, what it means when the source did not say."""
    for field in contract:
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(contract.names).cast(contract)


def _batches(files: list[Path], contract: pa.Schema, batch_rows: int) -> Iterator[pa.Table]:
    for file in files:
        for record_batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows):
            yield conformed(pa.Table.from_batches([record_batch]), contract)


def _joined(files: list[Path], audio_folder: Path, contract: pa.Schema, batch_rows: int) -> Iterator[pa.Table]:
    """The rows (small: no audio) in the order of the ingest partition's files, which are streamed
    a batch at a time with their audio, so memory holds one batch of audio."""
    rows = pa.concat_tables([conformed(pq.read_table(file), contract) for file in files]) if files else contract.empty_table()
    place = {sample_id: index for index, sample_id in enumerate(rows["id"].to_pylist())}
    for file in sorted(audio_folder.glob("*.parquet")):
        for record_batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=["id", stream.AUDIO.name]):
            found = [(place[i], n) for n, i in enumerate(record_batch.column(0).to_pylist()) if i in place]
            if found:
                audio = record_batch.column(1).take(pa.array([n for _, n in found]))
                yield rows.take(pa.array([p for p, _ in found])).append_column(stream.AUDIO, audio.cast(stream.AUDIO.type))
