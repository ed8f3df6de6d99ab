"""The `utterance` table: one row per speech segment, the output of ingest.

Audio stays the encoded bytes found in the source (mp3/flac/wav/opus); times are integer ms.

`recording` names the recording an utterance was cut from, namespaced by source like ids
(`emilia:EN_B00000_S00000`, `yodas2:<audio_id>`); its place there is `recording_start_ms` where
the source knows its start time, `segment_index` where the source numbers the recording's
segments in order instead. Null where the source does not say; later stages read these columns,
never the id.

`label_scores` holds one score per label-quality check of the transcript (`sylm_data/quality`;
higher = worse), kept on every row that passes so that thresholds can be chosen later. Ingest
fills the transcript's own; the align stage the transcript-against-audio ones
(`quality.alignment`), null until then and where its backend cannot measure them.
"""

import pyarrow as pa

NAME = "utterance"
VERSION = 3  # 2: recording, recording_start_ms, segment_index, label_scores (nullable); 3: alignment scores in label_scores

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
LABEL_SCORES = "label_scores"
META = "meta"

LOOP_SHARE = "loop_share"  # share of words inside an n-gram loop
BOILERPLATE_SHARE = "boilerplate_share"  # share of words inside a boilerplate phrase
LANGUAGE_MISMATCH = "language_mismatch"  # 1 - P(declared language) by text language ID
CODE_SWITCH_SHARE = "code_switch_share"  # share of words in another language
INAPPROPRIATE_SHARE = "inappropriate_share"  # share of listed inappropriate words
RESTART_RATE = "restart_rate"  # restarts and self-corrections per word
SPEAKING_RATE = "speaking_rate"  # characters per second of voiced audio / the language's typical rate
UNTRANSCRIBED_VOICE_SHARE = "untranscribed_voice_share"  # share of voiced audio before the first word or after the last
SQUEEZED_WORD_SHARE = "squeezed_word_share"  # share of words under 30 ms a phone (pocketsphinx)
SLOWEST_MS_PER_PHONE = "slowest_ms_per_phone"  # the most ms a phone of any one word (pocketsphinx)
TIMESTAMP_UNCERTAINTY = "timestamp_uncertainty"  # 1 - mean posterior of the chosen time bins (qwen3)
ONE_BIN_WORD_SHARE = "one_bin_word_share"  # share of words timed within one time bin (qwen3)
PILED_WORD_SHARE = "piled_word_share"  # share of words in a pile of 3+ starting at one time
INNER_SILENCE_SHARE = "inner_silence_share"  # share of the voiced span no word covers
ALIGNMENT_SCORES = (SPEAKING_RATE, UNTRANSCRIBED_VOICE_SHARE, SQUEEZED_WORD_SHARE, SLOWEST_MS_PER_PHONE,
                    TIMESTAMP_UNCERTAINTY, ONE_BIN_WORD_SHARE, PILED_WORD_SHARE, INNER_SILENCE_SHARE)
SCORES = pa.struct([(name, pa.float32()) for name in (LOOP_SHARE, BOILERPLATE_SHARE, LANGUAGE_MISMATCH, CODE_SWITCH_SHARE,
                                                       INAPPROPRIATE_SHARE, RESTART_RATE, *ALIGNMENT_SCORES)])

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
        pa.field(LABEL_SCORES, SCORES),
        pa.field(META, pa.string()),  # JSON object of the remaining source fields
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION)},
)
