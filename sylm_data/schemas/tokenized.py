"""The `tokenized` table: aligned columns plus syllable units with their spans (integer ms)."""

import pyarrow as pa

from sylm_data.schemas import aligned

NAME = "tokenized"
VERSION = 1

UNITS = "units"
UNIT_START_MS = "unit_start_ms"
UNIT_END_MS = "unit_end_ms"
TOKENIZER = "tokenizer"  # encoder id, layer and codebook id

SCHEMA = pa.schema(
    list(aligned.SCHEMA)
    + [
        pa.field(UNITS, pa.list_(pa.int32()), nullable=False),
        pa.field(UNIT_START_MS, pa.list_(pa.int64()), nullable=False),
        pa.field(UNIT_END_MS, pa.list_(pa.int64()), nullable=False),
        pa.field(TOKENIZER, pa.string(), nullable=False),
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION)},
)
