"""The WebDataset sample written by interleave, pairs and synthesize: `__key__` + `.json` of

    {"segments": [{"modality": "text", "text": "…", "units": null},
                  {"modality": "speech", "text": null, "units": [12, 873, …]}],
     "kind": "interleaved" | "speech" | "text" | "pairs", "language": "en", "source_id": "<utterance id>",
     "source_ids": ["<utterance id>", …], "synthetic": null | "<model id>"}

Every segment has the same three keys (the other modality's value null) and every sample has
`synthetic` (the text-to-token model's id in samples whose units it generated, else null), so a
reader that guesses one schema from the first samples (Hugging Face `datasets`, Arrow, pandas)
sees all of them. `source_ids` lists every utterance a sample holds, in order: one, except in a
document built from consecutive utterances of a recording (`interleave.context = "recording"`),
whose `source_id` is its first. Version 1 left the other modality's key and `synthetic` out,
version 2 `source_ids`; readers take all of them.

The trainer renders segments into token ids; the shard never depends on an LLM tokenizer.
"""

import pyarrow as pa

NAME = "sample"
VERSION = 3  # 2: every segment has text and units, every sample synthetic (null where absent); 3: source_ids

SEGMENTS = "segments"
MODALITY = "modality"
TEXT = "text"
SPEECH = "speech"
UNITS = "units"
KIND = "kind"
LANGUAGE = "language"
SOURCE_ID = "source_id"
SOURCE_IDS = "source_ids"
KINDS = ("interleaved", "speech", "text")  # what interleave and synthesize write
PAIRS = "pairs"  # text, speech, text, speech, …: each text and the units that say it (text-to-token training)
MEMBER = "member"  # a row of DIR/interleave in recording context: one utterance's chunks, part of a document to come
SYNTHETIC = "synthetic"  # in samples synthesize made: the text-to-token model's id


def text_segment(text: str) -> dict:
    return {MODALITY: TEXT, TEXT: text, UNITS: None}


def speech_segment(units: list[int]) -> dict:
    return {MODALITY: SPEECH, TEXT: None, UNITS: units}


def validate(sample: dict) -> None:
    """Raise ValueError unless `sample` follows the contract (version 1's absent keys are taken as null)."""
    if sample.get(KIND) not in KINDS + (PAIRS,):
        raise ValueError(f"kind must be one of {KINDS + (PAIRS,)}, got {sample.get(KIND)!r}")
    segments = sample.get(SEGMENTS)
    if not isinstance(segments, list) or not segments:
        raise ValueError("segments must be a non-empty list")
    for segment in segments:
        modality, text, units = (segment.get(key) for key in (MODALITY, TEXT, UNITS)) if isinstance(segment, dict) else [None] * 3
        if modality == TEXT and isinstance(text, str) and units is None:
            continue
        if modality == SPEECH and text is None and isinstance(units, list) and all(type(u) is int for u in units):
            continue
        raise ValueError(f"malformed segment {segment!r}")
    for field, allowed in ((LANGUAGE, (str,)), (SOURCE_ID, (str,)), (SYNTHETIC, (str, type(None)))):
        if not isinstance(sample.get(field), allowed):
            raise ValueError(f"{field} must be a string" + (" or null" if len(allowed) > 1 else ""))
    source_ids = sample.get(SOURCE_IDS, [sample[SOURCE_ID]])
    if not isinstance(source_ids, list) or not source_ids or source_ids[0] != sample[SOURCE_ID] \
            or not all(isinstance(item, str) for item in source_ids):
        raise ValueError(f"{SOURCE_IDS} must be a list of strings starting with {SOURCE_ID}")


def render(sample: dict) -> str:
    """Readable one-liner: `The river <speech 14 units> past the old mill`."""
    if SEGMENTS not in sample:
        return repr(sample.get(TEXT, ""))
    parts = [
        segment[TEXT] if segment[MODALITY] == TEXT else f"<speech {len(segment[UNITS])} units>"
        for segment in sample[SEGMENTS]
    ]
    return f"[{sample.get(KIND)}] " + " ".join(parts)


# The sample as a JSON reader sees it: one Arrow type for every sample of every shard folder.
SEGMENT_TYPE = pa.struct([pa.field(MODALITY, pa.string()), pa.field(TEXT, pa.string()),
                          pa.field(UNITS, pa.list_(pa.int32()))])
DOCUMENT_TYPE = pa.struct([pa.field(SEGMENTS, pa.list_(SEGMENT_TYPE)), pa.field(KIND, pa.string()),
                           pa.field(LANGUAGE, pa.string()), pa.field(SOURCE_ID, pa.string()),
                           pa.field(SOURCE_IDS, pa.list_(pa.string())), pa.field(SYNTHETIC, pa.string())])
# A row of Hugging Face `datasets`' webdataset builder: the key, the tar it came from, the parsed `.json`
DATASETS_ROW = pa.schema([pa.field("__key__", pa.string()), pa.field("__url__", pa.string()),
                          pa.field("json", DOCUMENT_TYPE)])


def _yaml_features(fields, indent: str) -> list[str]:
    """Arrow fields as a dataset card's `features` list (the form `datasets.Features._to_yaml_list` writes)."""
    lines = []
    for field in fields:
        lines.append(f"{indent}- name: {field.name}")
        kind = field.type
        if pa.types.is_struct(kind):
            lines += [f"{indent}  struct:", *_yaml_features(list(kind), indent + "  ")]
        elif pa.types.is_list(kind) and pa.types.is_struct(kind.value_type):
            lines += [f"{indent}  list:", *_yaml_features(list(kind.value_type), indent + "  ")]
        elif pa.types.is_list(kind):
            lines.append(f"{indent}  list: {kind.value_type}")
        else:
            lines.append(f"{indent}  dtype: {kind}")
    return lines


def dataset_card(index: dict, title: str) -> str:
    """The dataset card of a shard folder (its README.md): `datasets.load_dataset(FOLDER)` reads
    its tars with the webdataset builder and the explicit features, never guessing them from the
    first samples nor taking index.json for data."""
    front = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train", '    path: "*.tar"',
             "dataset_info:", "  features:", *_yaml_features(list(DATASETS_ROW), "  "), "---"]
    facts = [("samples", index.get("total_samples")), ("shards", len(index.get("shards", []))),
             ("unit tokenizer", index.get(INDEX_TOKENIZER)), ("unit vocabulary", index.get(INDEX_UNIT_VOCAB)),
             ("units generated by", index.get(SYNTHETIC)), ("sample contract", f"version {VERSION}")]
    body = [
        f"# {title}", "",
        "WebDataset shards of speech–text samples written by sylm-data; `index.json` lists the shards with their",
        "sample, word and unit counts. Each sample is `<key>.json`:", "",
        "```json",
        '{"segments": [{"modality": "text", "text": "The river", "units": null},',
        '              {"modality": "speech", "text": null, "units": [12, 873, 5]}],',
        ' "kind": "interleaved", "language": "en", "source_id": "emilia:EN_B00000_S00000_W000000",',
        ' "source_ids": ["emilia:EN_B00000_S00000_W000000"], "synthetic": null}',
        "```", "",
        "`kind` is interleaved, speech, text or pairs; units are ids into the unit vocabulary (not LLM tokens);",
        "`synthetic` names the text-to-token model that generated a sample's units (null for real speech);",
        "`source_ids` lists the utterances a sample holds (several in a document of a whole recording).", "",
        "| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in facts if value is not None), "",
        "```python",
        "from datasets import load_dataset, load_dataset_builder",
        'samples = load_dataset("path/to/this/folder", split="train")  # or streaming=True',
        "# the generic webdataset builder reads no card: give it this card's features",
        'features = load_dataset_builder("path/to/this/folder").info.features',
        'samples = load_dataset("webdataset", data_files="path/to/this/folder/*.tar", split="train", features=features)',
        "```", "",
    ]
    return "\n".join(front + body)


# index.json beside the shards names the unit vocabulary the speech segments index (absent for text-only shards)
INDEX_TOKENIZER = "tokenizer"
INDEX_UNIT_VOCAB = "unit_vocab"
INDEX_MAX_UNITS_PER_WORD = "max_units_per_word"  # pairs shards: the bound text-to-token generation keeps
INDEX_VERSION = "sample_version"  # the contract version of the samples

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
# where a member row's utterance sits (recording context; null in every other row): documents are
# assembled from these
ROW_RECORDING = "recording"
ROW_RECORDING_START_MS = "recording_start_ms"
ROW_DURATION_MS = "duration_ms"
ROW_SEGMENT_INDEX = "segment_index"
ROW_SPEAKER = "speaker"
# a member row's chunks, cut as utterance context cuts them (null in every other row; its json
# column holds its transcript): each chunk's words and units, where each word starts in the
# transcript (then the transcript's length), and its units
ROW_CHUNK_WORDS = "chunk_words"
ROW_CHUNK_UNITS = "chunk_units"
ROW_WORD_OFFSETS = "word_offsets"
ROW_UNIT_IDS = "unit_ids"
ROW_MEMBER_COLUMNS = (ROW_CHUNK_WORDS, ROW_CHUNK_UNITS, ROW_WORD_OFFSETS, ROW_UNIT_IDS)
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
        pa.field(ROW_RECORDING, pa.string()),
        pa.field(ROW_RECORDING_START_MS, pa.int64()),
        pa.field(ROW_DURATION_MS, pa.int64()),
        pa.field(ROW_SEGMENT_INDEX, pa.int64()),
        pa.field(ROW_SPEAKER, pa.string()),
        *(pa.field(name, pa.list_(pa.int32())) for name in ROW_MEMBER_COLUMNS),
    ],
    metadata={"sylm.contract": "sample_row", "sylm.version": str(VERSION)},
)

# DIR/documents (recording context): one row per document, as a sample row without its JSON, which
# only its shard holds (the group of its bucket, named as its folder); its `id` is its first utterance's
DOCUMENT_SCHEMA = pa.schema([field for field in ROW_SCHEMA if field.name not in (ROW_JSON, *ROW_MEMBER_COLUMNS)],
                            metadata={"sylm.contract": "document_row", "sylm.version": str(VERSION)})
