"""The envelope every in-flight row carries between stages of one run.

A stage never drops a row: it either fills its contract's columns or marks the row rejected
(`reject_stage`, `reject_reason`, `reject_detail`) and clears its payload. The writer at the end
of the plan sends rejected rows to `rejects/<stage>/` and the rest to the stage's output, and
counts both per partition, so a partition is complete when every one of its input samples has
come out one way or the other. `partition_total` is 0 on every record but the last one a reader
emits for a partition, which holds the partition's sample count.
"""

import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.schemas import reject

PARTITION = "partition"
PARTITION_TOTAL = "partition_total"
REJECT_STAGE = "reject_stage"
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"

ENVELOPE = [
    pa.field(PARTITION, pa.string(), nullable=False),
    pa.field(PARTITION_TOTAL, pa.int64(), nullable=False),
    pa.field(REJECT_STAGE, pa.string()),
    pa.field(REJECT_REASON, pa.string()),
    pa.field(REJECT_DETAIL, pa.string()),
]
ENVELOPE_NAMES = [field.name for field in ENVELOPE]

# contract metadata: its rows leave the audio in the ingest output, but carry it in flight for the
# stages after them (a fused align + tokenize); `accepted` never stores it
CARRIES_AUDIO = "sylm.carries_audio"
AUDIO = pa.field("audio", pa.large_binary())


def carries_audio(contract: pa.Schema) -> bool:
    return (contract.metadata or {}).get(CARRIES_AUDIO.encode()) == b"yes"


def in_flight(contract: pa.Schema) -> pa.Schema:
    """The contract's columns, all nullable (rejected rows clear them), the audio when the contract
    carries it, plus the envelope."""
    fields = [field.with_nullable(True) for field in contract if field.name not in ENVELOPE_NAMES]
    carried = [AUDIO] if carries_audio(contract) and AUDIO.name not in contract.names else []
    return pa.schema(fields + carried + ENVELOPE, metadata=contract.metadata)


def mark_rejected(row: dict, payload: list[str], stage: str, reason: str, detail: str) -> None:
    """Mark an in-flight row (a dict) rejected by `stage` and clear its payload columns."""
    row.update(dict.fromkeys(payload))
    if AUDIO.name in row:
        row[AUDIO.name] = None  # carried in flight, and no stage after this one needs it
    row.update({REJECT_STAGE: stage, REJECT_REASON: str(reason), REJECT_DETAIL: detail})


def is_rejected(table: pa.Table) -> pa.ChunkedArray:
    return pc.is_valid(table[REJECT_REASON])


def accepted(table: pa.Table, contract: pa.Schema) -> pa.Table:
    """The rows no stage rejected, cast to the strict contract (envelope columns dropped). With
    none rejected, the rows are not copied (a filter copies every value, audio included)."""
    if table[REJECT_REASON].null_count < table.num_rows:
        table = table.filter(pc.invert(is_rejected(table)))
    return table.select(contract.names).cast(contract)


def rejects(table: pa.Table) -> pa.Table:
    """The rejected rows as `reject` rows."""
    rows = table.filter(is_rejected(table))
    return pa.table(
        {
            reject.ID: rows["id"],
            reject.STAGE: rows[REJECT_STAGE],
            reject.REASON: rows[REJECT_REASON],
            reject.DETAIL: rows[REJECT_DETAIL],
            reject.SOURCE: rows["source"],
        }
    ).cast(reject.SCHEMA)
