"""The WebDataset sample written by interleave, pairs and synthesize: `__key__` + `.json` of

    {"segments": [{"modality": "text", "text": "…"}, {"modality": "speech", "units": [12, 873, …]}],
     "kind": "interleaved" | "speech" | "text" | "pairs", "language": "en", "source_id": "<utterance id>"}

plus `"synthetic": "<model id>"` in samples whose units a text-to-token model generated.

The trainer renders segments into token ids; the shard never depends on an LLM tokenizer.
"""

import pyarrow as pa

NAME = "sample"
VERSION = 1

SEGMENTS = "segments"
MODALITY = "modality"
TEXT = "text"
SPEECH = "speech"
UNITS = "units"
KIND = "kind"
LANGUAGE = "language"
SOURCE_ID = "source_id"
KINDS = ("interleaved", "speech", "text")  # what interleave and synthesize write
PAIRS = "pairs"  # text, speech, text, speech, …: each text and the units that say it (text-to-token training)
SYNTHETIC = "synthetic"  # in samples synthesize made: the text-to-token model's id


def validate(sample: dict) -> None:
    """Raise ValueError unless `sample` follows the contract."""
    if sample.get(KIND) not in KINDS + (PAIRS,):
        raise ValueError(f"kind must be one of {KINDS + (PAIRS,)}, got {sample.get(KIND)!r}")
    segments = sample.get(SEGMENTS)
    if not isinstance(segments, list) or not segments:
        raise ValueError("segments must be a non-empty list")
    for segment in segments:
        modality = segment.get(MODALITY)
        if modality == TEXT and isinstance(segment.get(TEXT), str):
            continue
        if modality == SPEECH and isinstance(segment.get(UNITS), list) and all(isinstance(u, int) for u in segment[UNITS]):
            continue
        raise ValueError(f"malformed segment {segment!r}")
    for field in (LANGUAGE, SOURCE_ID):
        if not isinstance(sample.get(field), str):
            raise ValueError(f"{field} must be a string")


def render(sample: dict) -> str:
    """Readable one-liner: `The river <speech 14 units> past the old mill`."""
    if SEGMENTS not in sample:
        return repr(sample.get(TEXT, ""))
    parts = [
        segment[TEXT] if segment[MODALITY] == TEXT else f"<speech {len(segment[UNITS])} units>"
        for segment in sample[SEGMENTS]
    ]
    return f"[{sample.get(KIND)}] " + " ".join(parts)


# index.json beside the shards names the unit vocabulary the speech segments index (absent for text-only shards)
INDEX_TOKENIZER = "tokenizer"
INDEX_UNIT_VOCAB = "unit_vocab"
INDEX_MAX_UNITS_PER_WORD = "max_units_per_word"  # pairs shards: the bound text-to-token generation keeps

# The interleave stage's rows: one sample each, ready for a shard (DIR/interleave/), plus the
# counts index.json sums.
ROW_KEY = "id"  # the sample's __key__ in the shard: the utterance id
ROW_SOURCE = "source"
ROW_KIND = KIND
ROW_LANGUAGE = LANGUAGE
ROW_JSON = "json"
ROW_WORDS = "words"
ROW_SPEECH_WORDS = "speech_words"
ROW_UNITS = "units"
ROW_TOKENIZER = "tokenizer"  # the tokenized rows' tokenizer id: names the unit vocabulary
ROW_SCHEMA = pa.schema(
    [
        pa.field(ROW_KEY, pa.string(), nullable=False),
        pa.field(ROW_SOURCE, pa.string(), nullable=False),
        pa.field(ROW_KIND, pa.string(), nullable=False),
        pa.field(ROW_LANGUAGE, pa.string(), nullable=False),
        pa.field(ROW_JSON, pa.string(), nullable=False),
        pa.field(ROW_WORDS, pa.int64(), nullable=False),
        pa.field(ROW_SPEECH_WORDS, pa.int64(), nullable=False),
        pa.field(ROW_UNITS, pa.int64(), nullable=False),
        pa.field(ROW_TOKENIZER, pa.string(), nullable=False),
    ],
    metadata={"sylm.contract": "sample_row", "sylm.version": str(VERSION)},
)
