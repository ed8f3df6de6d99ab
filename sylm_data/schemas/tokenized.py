"""The `tokenized` table: aligned columns plus syllable units with their spans (integer ms)."""

import pyarrow as pa

from sylm_data.schemas import aligned, stream

NAME = "tokenized"
VERSION = 4  # 2: no audio column (joined from the ingest output by id); 3: the utterance's recording columns; 4: alignment scores in label_scores

UNITS = "units"
UNIT_START_MS = "unit_start_ms"
UNIT_END_MS = "unit_end_ms"
TOKENIZER = "tokenizer"  # tokenizer_id(): encoder, layer, codebook size and digest

SCHEMA = pa.schema(
    list(aligned.SCHEMA)
    + [
        pa.field(UNITS, pa.list_(pa.int32()), nullable=False),
        pa.field(UNIT_START_MS, pa.list_(pa.int64()), nullable=False),
        pa.field(UNIT_END_MS, pa.list_(pa.int64()), nullable=False),
        pa.field(TOKENIZER, pa.string(), nullable=False),
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION), stream.CARRIES_AUDIO: "yes"},
)


def tokenizer_id(encoder: str, layer: int, clusters: int, units: int, digest: str) -> str:
    """`ENCODER:LAYER:kCLUSTERS:uUNITS:DIGEST`; the unit ids of a row lie in 0..UNITS-1."""
    return f"{encoder}:{layer}:k{clusters}:u{units}:{digest}"


def unit_vocabulary(tokenizer: str) -> int:
    """How many unit ids a tokenizer_id() names (the encoder part may itself hold colons)."""
    parts = tokenizer.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].startswith("u") or not parts[1][1:].isdigit():
        raise ValueError(f"{tokenizer!r} is not a tokenizer id (ENCODER:LAYER:kCLUSTERS:uUNITS:DIGEST)")
    return int(parts[1][1:])
