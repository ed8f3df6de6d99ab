"""The `reject` table: every input sample that is not in a stage's output is here, with a reason."""

from enum import StrEnum

import pyarrow as pa

NAME = "reject"
VERSION = 1

ID = "id"
STAGE = "stage"
REASON = "reason"
DETAIL = "detail"
SOURCE = "source"

SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(DETAIL, pa.string()),
        pa.field(SOURCE, pa.string()),
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION)},
)


class Reason(StrEnum):
    """Stable reason codes. Add new ones; never rename one that has shipped."""

    # the source container
    EMPTY_INPUT = "empty_input"  # an input file that holds no sample at all
    TRUNCATED_ARCHIVE = "truncated_archive"
    UNREADABLE_INPUT = "unreadable_input"
    MISSING_AUDIO = "missing_audio"
    MISSING_METADATA = "missing_metadata"
    BAD_METADATA = "bad_metadata"
    DUPLICATE_ID = "duplicate_id"
    # the audio
    DECODE_ERROR = "decode_error"
    EMPTY_AUDIO = "empty_audio"
    DURATION_MISMATCH = "duration_mismatch"
    SEGMENT_OUT_OF_RANGE = "segment_out_of_range"
    # the transcript and labels
    EMPTY_TEXT = "empty_text"
    UNKNOWN_LANGUAGE = "unknown_language"
    LANGUAGE_FILTERED = "language_filtered"
    SUBSET_FILTERED = "subset_filtered"  # a source subset not chosen (ingest.subsets, e.g. YODAS2 en100)
    LANGUAGE_UNSUPPORTED = "language_unsupported"
    FOREIGN_SCRIPT = "foreign_script"
    FILLER_WORDS = "filler_words"
    STUTTER = "stutter"
    # label quality (sylm_data/quality): a score over its threshold
    HALLUCINATION_LOOP = "hallucination_loop"
    BOILERPLATE_PHRASE = "boilerplate_phrase"
    LANGUAGE_MISMATCH = "language_mismatch"
    CODE_SWITCHING = "code_switching"
    INAPPROPRIATE_WORDS = "inappropriate_words"
    RESTARTS = "restarts"
    NEAR_DUPLICATE = "near_duplicate"  # a transcript near another kept elsewhere (ingest.near_duplicates = "drop")
    # quality filters
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    LOW_QUALITY = "low_quality"
    # any stage: an unexpected error on one sample (a bug or a library failure), logged with its traceback
    STAGE_ERROR = "stage_error"
    # later stages
    ALIGN_FAILED = "align_failed"
    # transcript against audio (quality.alignment): an alignment score beyond its bound
    SPEAKING_RATE = "speaking_rate"
    UNTRANSCRIBED_SPEECH = "untranscribed_speech"
    LOW_ALIGNMENT_CONFIDENCE = "low_alignment_confidence"
    NO_WORDS = "no_words"
    NO_UNITS = "no_units"
    SPANS_DISJOINT = "spans_disjoint"  # the words' time span and the units' do not overlap
    # text corpora (synthesize)
    MARKUP = "markup"  # mostly markup remnants, links or URLs
    LONG_TOKENS = "long_tokens"  # too many very long tokens (hashes, base64, run-together text)
