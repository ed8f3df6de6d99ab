"""The `utterance` table: one row per speech segment, the output of ingest.

Audio stays the encoded bytes found in the source (mp3/flac/wav/opus); times are integer ms.

`recording` names the recording an utterance was cut from, namespaced by source like ids
(`emilia:EN_B00000_S00000`, `yodas2:<audio_id>`); its place there is `recording_start_ms` where
the source knows its start time, `segment_index` where the source numbers the recording's
segments in order instead. Null where the source does not say; later stages read these columns,
never the id.
"""

import pyarrow as pa

NAME = "utterance"
VERSION = 2  # 2: recording, recording_start_ms, segment_index (nullable)

ID = "id"
SOURCE = "source"
AUDIO = "audio"
AUDIO_FORMAT = "audio_format"
SAMPLE_RATE = "sample_rate"
DURATION_MS = "duration_ms"
TEXT = "text"
LANGUAGE = "language"
SPEAKER = "speaker"
QUALITY = "quality"
RECORDING = "recording"
RECORDING_START_MS = "recording_start_ms"
SEGMENT_INDEX = "segment_index"
META = "meta"

SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        # large_binary: a block of long recordings overflows int32 offsets past 2 GiB.
        pa.field(AUDIO, pa.large_binary(), nullable=False),
        pa.field(AUDIO_FORMAT, pa.string(), nullable=False),
        pa.field(SAMPLE_RATE, pa.int32(), nullable=False),
        pa.field(DURATION_MS, pa.int64(), nullable=False),
        pa.field(TEXT, pa.string(), nullable=False),
        pa.field(LANGUAGE, pa.string(), nullable=False),
        pa.field(SPEAKER, pa.string()),
        pa.field(QUALITY, pa.float32()),
        pa.field(RECORDING, pa.string()),
        pa.field(RECORDING_START_MS, pa.int64()),
        pa.field(SEGMENT_INDEX, pa.int64()),
        pa.field(META, pa.string()),  # JSON object of the remaining source fields
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION)},
)
