"""The `source_record` table: what a source reader hands to ingest, one row per input sample.

Readers only unpack containers and map source fields to these names; ingest validates everything.
A record the reader could not unpack arrives already rejected (see `schemas.stream`).
"""

import pyarrow as pa

NAME = "source_record"
VERSION = 2  # 2: recording, recording_start_ms, segment_index

ID = "id"
SOURCE = "source"
AUDIO = "audio"
AUDIO_NAME = "audio_name"  # file name inside the source; its extension is a format hint only
TEXT = "text"
LANGUAGE = "language"  # as the source spells it; ingest normalises to ISO 639-1
SPEAKER = "speaker"
QUALITY = "quality"
DECLARED_DURATION_MS = "declared_duration_ms"  # what the source claims; checked against the audio
RECORDING = "recording"  # the recording the sample was cut from, namespaced by source like ids
RECORDING_START_MS = "recording_start_ms"  # its start in the recording, where the source knows it
SEGMENT_INDEX = "segment_index"  # else its number in the recording's segment order, where the source has one
META = "meta"

SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(AUDIO, pa.large_binary()),
        pa.field(AUDIO_NAME, pa.string()),
        pa.field(TEXT, pa.string()),
        pa.field(LANGUAGE, pa.string()),
        pa.field(SPEAKER, pa.string()),
        pa.field(QUALITY, pa.float32()),
        pa.field(DECLARED_DURATION_MS, pa.int64()),
        pa.field(RECORDING, pa.string()),
        pa.field(RECORDING_START_MS, pa.int64()),
        pa.field(SEGMENT_INDEX, pa.int64()),
        pa.field(META, pa.string()),
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION)},
)
