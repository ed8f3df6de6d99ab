"""The `aligned` table: utterance columns (but the audio) plus word timings from a forced aligner.

The audio is stored once, in the ingest output; in flight the rows carry it (`stream.CARRIES_AUDIO`)
and a later run joins it back by id within the partition (`pipeline.partitions`).

Words are the transcript's words in order (punctuation dropped); for Chinese and Cantonese each
character is a unit, for Japanese a morpheme — `word_unit` says which.
"""

import pyarrow as pa

from sylm_data.schemas import stream, utterance

NAME = "aligned"
VERSION = 4  # 2: no audio column (joined from the ingest output by id); 3: the utterance's recording columns; 4: alignment scores in label_scores

WORDS = "words"
ALIGNER = "aligner"  # backend, model id and version
WORD_UNIT = "word_unit"  # word | char | morpheme

WORD_TEXT = "text"
WORD_START_MS = "start_ms"
WORD_END_MS = "end_ms"
WORD = pa.struct([(WORD_TEXT, pa.string()), (WORD_START_MS, pa.int64()), (WORD_END_MS, pa.int64())])

SCHEMA = pa.schema(
    [field for field in utterance.SCHEMA if field.name != utterance.AUDIO]  # the audio stays in ingest's rows
    + [
        pa.field(WORDS, pa.list_(WORD), nullable=False),
        pa.field(ALIGNER, pa.string(), nullable=False),
        pa.field(WORD_UNIT, pa.string(), nullable=False),
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION), stream.CARRIES_AUDIO: "yes"},
)
