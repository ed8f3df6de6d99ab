"""The `aligned` table: utterance columns plus word timings from a forced aligner.

Words are the transcript's words in order (punctuation dropped); for Chinese and Cantonese each
character is a unit, for Japanese a morpheme — `word_unit` says which.
"""

import pyarrow as pa

from sylm_data.schemas import utterance

NAME = "aligned"
VERSION = 1

WORDS = "words"
ALIGNER = "aligner"  # backend, model id and version
WORD_UNIT = "word_unit"  # word | char | morpheme

WORD_TEXT = "text"
WORD_START_MS = "start_ms"
WORD_END_MS = "end_ms"
WORD = pa.struct([(WORD_TEXT, pa.string()), (WORD_START_MS, pa.int64()), (WORD_END_MS, pa.int64())])

SCHEMA = pa.schema(
    list(utterance.SCHEMA)
    + [
        pa.field(WORDS, pa.list_(WORD), nullable=False),
        pa.field(ALIGNER, pa.string(), nullable=False),
        pa.field(WORD_UNIT, pa.string(), nullable=False),
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION)},
)
