"""Shard folders as Hugging Face `datasets` reads them: through the dataset card (map-style and
streaming), through the generic webdataset builder, real and synthetic folders together, and a
folder of one shard. Every sample and every unit id comes back; the bundled trainer reads the same
folders. Folders are published with the stages' own writer, in-process (no Ray)."""

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
import torch
import webdataset as wds
import yaml

from sylm_data.pipeline import shards
from sylm_data.schemas import sample, stream
from sylm_data.stages import interleave, synthesize
from sylm_data.train import data, t2t
from sylm_data.train.vocab import SpeechVocabulary
from tests.conftest import commit_rows, serial
from tests.test_interleave import WORDS, row, tokenized_rows
from tests.test_synthesize import corpus_batch

UNIT_VOCAB = 16  # the rows' tokenizer, mfcc:0:k16:u16:abc


@pytest.fixture(autouse=True)
def quiet_datasets(tmp_path, monkeypatch):
    datasets.disable_progress_bars()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # no cache shared across tests


def varied_rows(prefix: str, count: int) -> list[dict]:
    """Utterances whose units differ from one to the next, so that a lost or shifted unit shows."""
    return [row(WORDS, [((n * 5 + k) % UNIT_VOCAB, start, end) for k, (_, start, end) in enumerate(WORDS)],
                id=f"manifest:{prefix}-{n:03d}") for n in range(count)]


def publish_interleaved(out: Path, parts: dict[str, tuple[dict, int]], **options) -> Path:
    """DIR/shards from partitions {name: (kinds, samples)}, written by the interleave stage's finalize."""
    for partition, (kinds, count) in parts.items():
        made = interleave.transform(tokenized_rows(varied_rows(partition, count)), interleave.InterleaveConfig(kinds=kinds))
        commit_rows(out / "interleave", partition, stream.accepted(made, sample.ROW_SCHEMA))
    interleave.write_shards(interleave.InterleaveConfig(**options), out / "interleave", serial)
    return out / "shards"


def written(folder: Path) -> dict[str, dict]:
    """Every sample of a folder as its tars hold it (key -> parsed json), read with plain webdataset."""
    index = json.loads((folder / shards.INDEX).read_text())
    tars = [str(folder / entry["name"]) for entry in index["shards"]]
    found = {item["__key__"]: json.loads(item["json"]) for item in wds.WebDataset(tars, shardshuffle=False)}
    assert len(found) == index["total_samples"]
    return found


def units_of(documents) -> list[int]:
    return [unit for document in documents for segment in document["segments"] for unit in segment["units"] or []]


def loaded(rows) -> dict[str, dict]:
    """key -> json of the rows `datasets` gave back (a key twice is a failure)."""
    found = {}
    for item in rows:
        assert item["__key__"] not in found
        found[item["__key__"]] = item["json"]
    return found


def card_features(folder: Path) -> datasets.Features:
    return datasets.load_dataset_builder(str(folder)).info.features


def test_small_shards_whose_first_samples_are_speech_only_load_whole_every_way(tmp_path):
    # partition a (shards first) holds speech samples only, b text only, c interleaved ones
    folder = publish_interleaved(tmp_path, {"a": ({"speech": 1.0}, 12), "b": ({"text": 1.0}, 12),
                                            "c": ({"interleaved": 1.0}, 12)}, shard_bytes=1500)
    tars = sorted(str(path) for path in folder.glob("*.tar"))
    assert len(tars) > 6 and (folder / shards.CARD).exists()
    expected = written(folder)
    first = [expected[key] for key in sorted(expected)[:6]]
    assert all(s["modality"] == "speech" for document in first for s in document["segments"])
    assert card_features(folder) == datasets.Features.from_arrow_schema(sample.DATASETS_ROW)

    by_card = datasets.load_dataset(str(folder), split="train")
    assert loaded(by_card) == expected  # every sample, every key (nulls included), every unit id
    assert loaded(datasets.load_dataset(str(folder), split="train", streaming=True)) == expected
    # the generic builder reads no card: streaming guesses from the first samples, which now hold every key ...
    streamed = loaded(datasets.load_dataset("webdataset", data_files=tars, split="train", streaming=True))
    assert streamed == expected and units_of(streamed.values()) == units_of(expected.values())
    # ... and map-style takes the card's features
    mapped = datasets.load_dataset("webdataset", data_files=tars, split="train", features=card_features(folder))
    assert loaded(mapped) == expected
    assert len(units_of(expected.values())) == 12 * 6 + sum(len(s["units"] or []) for key, d in expected.items()
                                                            if key.startswith("manifest:c") for s in d["segments"])


def synthetic_folder(out: Path) -> Path:
    """DIR/shards-synthetic from a tiny random text-to-token model, written by the synthesize stage."""
    torch.manual_seed(0)
    model = t2t.new_model("t2t-tiny", UNIT_VOCAB)
    with torch.no_grad():
        model.lm_head.weight[t2t.EOS] = 0  # a random model that always says something
    model.save_pretrained(out / "t2t")
    t2t.save_meta(out / "t2t", UNIT_VOCAB, "mfcc:0:k16:u16:abc", 2.0, "toy-t2t@1")
    config = synthesize.SynthesizeConfig(model=str(out / "t2t"), device="cpu", speech_ratio=0.5, span_mean=2, min_words=3)
    texts = [f"the river ran past the old mill number {n} before it reached the sea." for n in range(10)]
    made = synthesize.Synthesizer(config)(corpus_batch(texts, "en"))
    commit_rows(out / "synthesize", "p", stream.accepted(made, sample.ROW_SCHEMA))
    synthesize.write_shards(config, out / "synthesize", serial)
    return out / "shards-synthetic"


def test_real_and_synthetic_folders_load_together_and_keep_synthetic(tmp_path):
    real = publish_interleaved(tmp_path, {"p": (interleave.InterleaveConfig().kinds, 20)}, shard_bytes=2000)
    synthetic = synthetic_folder(tmp_path)
    expected = written(real) | written(synthetic)
    assert {document["synthetic"] for document in expected.values()} == {None, "toy-t2t@1"}
    assert units_of(written(synthetic).values())  # the model said something

    together = datasets.concatenate_datasets([datasets.load_dataset(str(folder), split="train") for folder in (real, synthetic)])
    assert loaded(together) == expected
    tars = sorted(str(path) for folder in (real, synthetic) for path in folder.glob("*.tar"))  # real ones first
    assert loaded(datasets.load_dataset("webdataset", data_files=tars, split="train", streaming=True)) == expected
    mixed = datasets.load_dataset("webdataset", data_files=tars, split="train", features=card_features(real))
    assert loaded(mixed) == expected


def test_a_folder_of_one_shard_loads_its_samples_not_its_index(tmp_path):
    folder = publish_interleaved(tmp_path, {"p": (interleave.InterleaveConfig().kinds, 9)})
    assert len(list(folder.glob("*.tar"))) == 1
    expected = written(folder)
    for streaming in (False, True):
        assert loaded(datasets.load_dataset(str(folder), split="train", streaming=streaming)) == expected


class ByteTokenizer:
    """Text as UTF-8 bytes: enough of a tokenizer for `data.render`."""
    bos_token_id, eos_token_id = None, 256

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(text.encode()) for text in texts]}


def test_the_bundled_trainer_reads_the_same_folders(tmp_path):
    folder = publish_interleaved(tmp_path, {"p": (interleave.InterleaveConfig().kinds, 30)}, shard_bytes=2000)
    opened = data.open_folder(folder)
    vocab = SpeechVocabulary(speech_marker=300, text_marker=301, first_unit=302, units=UNIT_VOCAB)
    documents = [data.parse(document, opened.unit_vocab) for document in data.documents_in_order(opened)]
    assert len(documents) == 30 and None not in documents
    for document in documents:
        [(ids, _, _)] = data.render(document, ByteTokenizer(), vocab)
        assert [i - vocab.first_unit for i in ids if i >= vocab.first_unit] == units_of([document])


def test_the_card_names_the_folders_facts(tmp_path):
    folder = publish_interleaved(tmp_path, {"p": (interleave.InterleaveConfig().kinds, 9)})
    card = (folder / shards.CARD).read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "*.tar"}]}]
    assert datasets.Features._from_yaml_list(meta["dataset_info"]["features"]) == \
        datasets.Features.from_arrow_schema(sample.DATASETS_ROW)
    assert "| samples | 9 |" in card and "mfcc:0:k16:u16:abc" in card and f"version {sample.VERSION}" in card
    assert json.loads((folder / shards.INDEX).read_text())[sample.INDEX_VERSION] == sample.VERSION
    assert pa.types.is_int32(sample.SEGMENT_TYPE.field(sample.UNITS).type.value_type)
