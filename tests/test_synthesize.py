"""Text-to-token pairs, the model's rendering and generation, text hygiene, and the whole path:
pairs shards -> `train --task t2t` -> `eval t2t` -> synthesize a text corpus into shards."""

import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from sylm_data.align import split
from sylm_data.documents import render
from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import runner
from sylm_data.pipeline.shards import ShardWriter
from sylm_data.pipeline.stage import Rejected, StageConfigError
from sylm_data.schemas import sample, source_record, stream
from sylm_data.stages import pairs, synthesize
from sylm_data.train import config as train_config
from sylm_data.train import data, loop, t2t
from tests.conftest import commit_rows, serial
from tests.test_interleave import UNITS, WORDS, row

VOCABULARY = "the river ran past old mill before it reached sea and a boy saw fish swim under bridge".split()
UNIT_VOCAB = 32


def pronounce(word: str) -> list[int]:
    """A fixed made-up pronunciation the model can learn: two or three units a word."""
    return [(sum(map(ord, word)) * 7 + 13 * k) % UNIT_VOCAB for k in range(2 + len(word) % 2)]


def test_pairs_keep_every_word_and_unit_once_in_text_then_speech_order():
    batch = [row(WORDS, UNITS, id=f"manifest:{n}") for n in range(20)]
    config = pairs.PairsConfig(span_mean=2)
    out = render.build_samples(pa.Table.from_pylist(batch), config, pairs.plan_pairs, pairs.NAME).to_pylist()
    spans_seen = set()
    for item in out:
        document = json.loads(item["json"])
        sample.validate(document)
        segments = document["segments"]
        assert document["kind"] == item["kind"] == "pairs"
        assert [s["modality"] for s in segments] == ["text", "speech"] * (len(segments) // 2)
        assert " ".join(s["text"] for s in segments[0::2]) == "The river ran past the mill."
        assert [u for s in segments[1::2] for u in s["units"]] == [u for u, _, _ in UNITS]
        spans_seen.add(len(segments) // 2)
    assert len(spans_seen) > 1  # span lengths are drawn per utterance


def test_a_pair_renders_as_bytes_separator_units_and_eos_with_loss_on_the_units():
    [(ids, labels, _)] = t2t.render_pairs({"segments": [{"modality": "text", "text": "hé"}, {"modality": "speech", "units": [3, 4]}]})
    assert ids == [104, 195, 169, t2t.SEP, t2t.FIRST_UNIT + 3, t2t.FIRST_UNIT + 4, t2t.EOS]
    assert labels == [t2t.IGNORE] * 4 + ids[4:]


def test_generation_is_batched_like_single_calls_and_keeps_its_bounds():
    torch.manual_seed(0)
    model = t2t.new_model("t2t-tiny", UNIT_VOCAB).eval()
    texts = ["the river", "a boy saw fish swim under the old bridge", "sea"]
    limits = [5, 9, 2]
    batched = t2t.generate(model, texts, limits)
    assert batched == [t2t.generate(model, [text], [limit])[0] for text, limit in zip(texts, limits)]
    assert all(len(units) <= limit for units, limit in zip(batched, limits))
    assert all(0 <= unit < UNIT_VOCAB for units in batched for unit in units)
    sampled = t2t.generate(model, texts, [20] * 3, temperature=1.0, top_k=8, seeds=[1, 2, 3])
    assert sampled == t2t.generate(model, texts, [20] * 3, temperature=1.0, top_k=8, seeds=[1, 2, 3])
    assert sampled != t2t.generate(model, texts, [20] * 3, temperature=1.0, top_k=8, seeds=[4, 5, 6])


def test_generation_with_the_kv_cache_is_what_recomputing_the_whole_sequence_gives():
    """The cache really is passed back in (a cache argument the model does not know would be dropped
    silently, each step then seeing only its own token)."""
    torch.manual_seed(0)
    model = t2t.new_model("t2t-tiny", UNIT_VOCAB).eval()
    tokens, expected = list(t2t.prompt("a boy saw fish swim")), []
    with torch.inference_mode():
        for _ in range(12):
            logits = model(input_ids=torch.tensor([tokens])).logits[0, -1].float()
            allowed = torch.arange(len(logits)) >= t2t.FIRST_UNIT
            allowed[t2t.EOS] = True
            token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
            if token == t2t.EOS:
                break
            expected.append(token - t2t.FIRST_UNIT)
            tokens.append(token)
    assert t2t.generate(model, ["a boy saw fish swim"], [12]) == [expected]


def test_documents_are_cleaned_and_checked():
    cleaned, removed = synthesize.clean("<p>The <b>river</b> &amp; the [mill](http://x.org/a) https://y.com/z ran.</p>")
    assert cleaned == "The river & the mill ran." and removed > 0
    config = synthesize.SynthesizeConfig(languages=["en"], min_words=3)
    text, language, words = synthesize.check_document("The river ran past the mill.", None, config)
    assert (text, language) == ("The river ran past the mill.", "en")
    assert [(word, text[start:end]) for word, start, end in words][-2:] == [("the", "the"), ("mill", "mill")]
    for text, language, reason in [
        ("", None, "empty_text"), ("the river ran", "xx", "unknown_language"), ("der Fluss lief", "de", "language_filtered"),
        ("<div><span></span></div><a href='u'>a b c</a>" * 3, None, "markup"),
        ("the river " + "x" * 80 + " ran", None, "long_tokens"), ("река текла мимо мельницы", None, "foreign_script"),
        ("the river", None, "too_short")]:
        with pytest.raises(Rejected) as rejected:
            synthesize.check_document(text, language, config)
        assert rejected.value.reason == reason, text


def write_pairs(folder: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    with ShardWriter(folder, extra_index={"tokenizer": f"toy:0:k{UNIT_VOCAB}:u{UNIT_VOCAB}:0", "unit_vocab": UNIT_VOCAB,
                                          "max_units_per_word": 3.0}) as writer:
        for index in range(count):
            segments = []
            for _ in range(rng.randint(1, 3)):
                words = [rng.choice(VOCABULARY) for _ in range(rng.randint(1, 4))]
                segments += [{"modality": "text", "text": " ".join(words)},
                             {"modality": "speech", "units": [u for w in words for u in pronounce(w)]}]
            document = {"segments": segments, "kind": "pairs", "language": "en", "source_id": f"toy:{seed}:{index}"}
            writer.write(f"pair{seed}-{index:05d}", {"json": json.dumps(document).encode()})
    return folder


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_train_a_text_to_token_model_evaluate_it_and_synthesize_a_corpus(tmp_path):
    train_pairs, heldout = write_pairs(tmp_path / "pairs-shards", 600, 0), write_pairs(tmp_path / "pairs-heldout", 40, 1)
    untrained = t2t.new_model("t2t-tiny", UNIT_VOCAB).eval()
    before = t2t.evaluate(untrained, {"max_units_per_word": 3.0}, t2t.heldout_pairs(heldout, 100))

    def settings(steps: int) -> list[str]:
        return ["model.task='t2t'", "model.name='t2t-tiny'", f"data.shards=['{train_pairs}']", "data.seq_len=256",
                "data.micro_batch=8", "data.workers=0", f"optim.steps={steps}", "optim.warmup_steps=10", "optim.lr=3e-3",
                "optim.weight_decay=0.0", f"run.output='{tmp_path / 't2t'}'", "run.log_every=10", "run.progress=false"]
    trained = loop.train(train_config.load(None, settings(150)), echo=lambda line: None)
    assert trained["outcome"] == "finished"
    final = tmp_path / "t2t" / "final"
    model, meta = t2t.load(str(final))
    assert meta["unit_vocab"] == UNIT_VOCAB and meta["max_units_per_word"] == 3.0 and meta["id"].endswith("@150")
    after = t2t.evaluate(model, meta, t2t.heldout_pairs(heldout, 100))
    assert after["unit_accuracy"] > max(0.5, before["unit_accuracy"] + 0.3), (before, after)
    assert after["perplexity"] < before["perplexity"] / 4 and 0.8 < after["length_ratio"] < 1.2

    corpus = tmp_path / "corpus.jsonl"
    good = [" ".join(random.Random(n).choices(VOCABULARY, k=40)) + "." for n in range(30)]
    bad = [{"text": "<div>" * 40 + "a b c d e f"}, {"text": "short one"}, {"id": "nothing"}, "not an object"]
    corpus.write_text("\n".join([json.dumps({"id": f"d{n}", "text": text}) for n, text in enumerate(good)]
                                + [json.dumps(item) for item in bad]) + "\n")
    cfg = config_module.load(None, [f"synthesize.model='{final}'", "synthesize.batch_size=8", "synthesize.generate_batch=16"])
    cfg.stages["synthesize"].inputs = [str(corpus)]
    record = runner.run(cfg, ["synthesize"], str(tmp_path / "out"), log=lambda line: None).record
    assert record["this_run"][-1]["out"] == 30
    assert record["this_run"][-1]["rejected"] == {"markup": 1, "too_short": 1, "empty_text": 1, "bad_metadata": 1}
    shards = data.open_folder(tmp_path / "out" / "shards-synthetic")
    index = json.loads((shards.path / "index.json").read_text())
    assert index["synthetic"] == meta["id"] and shards.unit_vocab == UNIT_VOCAB
    assert abs(index["stats"]["speech_text_ratio"] - 0.3) < 0.06
    documents = [json.loads(document) for document in data.documents_in_order(shards)]
    assert all(document["synthetic"] == meta["id"] and document["kind"] == "interleaved" for document in documents)
    assert all(list(segment) == ["modality", "text", "units"] for document in documents for segment in document["segments"])
    assert "path: \"*.tar\"" in (shards.path / "README.md").read_text()  # the dataset card
    spans = [pair for document in documents
             for pair in spoken_spans(good[int(document["source_id"].split(":d")[1])].split(), document["segments"])]
    exact = sum(units == [u for w in words for u in pronounce(w.strip("."))] for words, units in spans) / len(spans)
    assert exact > 0.3, exact  # the model says the words as it learned them


def spoken_spans(words: list[str], segments: list[dict]) -> list[tuple[list[str], list[int]]]:
    """(words, units) of each speech segment: the words between the text segments around it."""
    found, at = [], 0
    for number, segment in enumerate(segments):
        if segment["modality"] == "text":
            at += len(segment["text"].split())
            continue
        following = next((s["text"].split() for s in segments[number + 1 :] if s["modality"] == "text"), None)
        end = len(words) if following is None else next(q for q in range(at, len(words)) if words[q : q + len(following)] == following)
        found.append((words[at:end], segment["units"]))
        at = end
    return found


def test_the_text_reader_reads_parquet_and_refuses_a_file_without_text(tmp_path):
    import pyarrow.parquet as pq

    from sylm_data.sources import READERS, SourceError

    pq.write_table(pa.table({"text": ["the river ran", None], "id": ["a", "b"]}), tmp_path / "corpus.parquet")
    pq.write_table(pa.table({"body": ["the river ran"]}), tmp_path / "other.parquet")
    reader = READERS["text"]
    [partition, other] = reader.partitions([str(tmp_path / "corpus.parquet"), str(tmp_path / "other.parquet")])
    records = list(reader.read(partition))
    assert [(r.key, r.text, r.reject) for r in records] == [("a", "the river ran", None), ("b", None, "empty_text")]
    with pytest.raises(SourceError, match="no 'text' column"):
        list(reader.read(other))


def test_the_pairs_stage_splits_held_out_utterances_and_bounds_units_per_word(tmp_path):
    batch = [row(WORDS, UNITS, id=f"manifest:{n}") for n in range(200)]
    out = render.build_samples(pa.Table.from_pylist(batch), pairs.PairsConfig(), pairs.plan_pairs, pairs.NAME)
    commit_rows(tmp_path / "pairs", "p", stream.accepted(out, sample.ROW_SCHEMA))
    summary = pairs.write_shards(pairs.PairsConfig(heldout_share=0.1), tmp_path / "pairs", serial)
    assert summary["pairs-shards"] + summary["pairs-heldout"] == 200 and 5 <= summary["pairs-heldout"] <= 40
    trained, heldout = data.open_folder(tmp_path / "pairs-shards"), data.open_folder(tmp_path / "pairs-heldout")
    assert trained.max_units_per_word == heldout.max_units_per_word == 1.0  # one unit per word in these rows
    assert trained.unit_vocab == 16
    held_ids = {json.loads(d)["source_id"] for d in data.documents_in_order(heldout)}
    for document in map(json.loads, data.documents_in_order(trained)):  # contract 2: one schema, nulls where absent
        sample.validate(document)
        assert document["synthetic"] is None and all(len(segment) == 3 for segment in document["segments"])
        rendered = t2t.render_pairs(document)  # the t2t trainer reads the nulls
        assert len(rendered) == len(document["segments"]) // 2 and all(labels[-1] == t2t.EOS for _, labels, _ in rendered)
    assert all(units for _, units, _ in t2t.heldout_pairs(tmp_path / "pairs-heldout", 100))
    assert all((tmp_path / name / "README.md").exists() for name in ("pairs-shards", "pairs-heldout"))
    assert held_ids == {f"manifest:{n}" for n in range(200) if pairs.heldout(f"manifest:{n}", pairs.PairsConfig(heldout_share=0.1))}
    pairs.write_shards(pairs.PairsConfig(heldout_share=0.0), tmp_path / "pairs", serial)
    assert json.loads((tmp_path / "pairs-heldout" / "index.json").read_text())["total_samples"] == 0
    assert not list((tmp_path / "pairs-heldout").glob("*.tar"))  # no stale held-out pairs from the earlier run


def test_spans_too_long_for_the_model_stay_text(tmp_path):
    model = t2t.new_model("t2t-tiny", UNIT_VOCAB, max_positions=64)
    model.save_pretrained(tmp_path)
    t2t.save_meta(tmp_path, UNIT_VOCAB, "toy:0:k32:u32:0", 3.0, "toy")
    stage = synthesize.Synthesizer(synthesize.SynthesizeConfig(model=str(tmp_path), device="cpu"))
    pieces = ["the river", "ran past the old mill before it reached the sea"]  # 9 + 1 + 6 and 47 + 1 + 30 positions of 64
    assert stage._fitting([(0, 2, True), (2, 12, True)], pieces) == [(0, 2, True), (2, 12, False)]


TRANSCRIPTS = {"zh": "今天天气很好，我们去公园散步吧。他说：“你好，世界！”", "ja": "今日はいい天気ですね。東京へ行きます。"}
CORPUS = {"zh": "《红楼梦》是中国古典小说，我在2024年读完了它。今天天气很好，我们去公园散步吧！",
          "ja": "ＡＩを使って、東京へ行きます。今日はいい天気ですね。明日は雨が降るでしょう。"}


def aligned_row(text: str, language: str, id: str) -> dict:
    """A tokenized row as the aligner leaves it: its words (characters, morphemes) 200 ms apart, two units each."""
    words = [(word, 200 * k, 200 * k + 180) for k, word in enumerate(split.split_words(text, language))]
    units = [(2 * k + half, 200 * k + 100 * half, 200 * k + 100 * half + 100) for k in range(len(words)) for half in (0, 1)]
    return row(words, [(unit % 16, start, end) for unit, start, end in units], text=text, id=id) | {"language": language}


def corpus_batch(texts: list[str], language: str) -> pa.Table:
    return pa.Table.from_pylist([{source_record.ID: f"text:{n}", source_record.SOURCE: "text", source_record.TEXT: text,
                                  source_record.LANGUAGE: language, stream.PARTITION: "p", stream.PARTITION_TOTAL: 0,
                                  stream.REJECT_STAGE: None, stream.REJECT_REASON: None, stream.REJECT_DETAIL: None}
                                 for n, text in enumerate(texts)])


@pytest.mark.parametrize("language", ["zh", "ja"])
def test_chinese_and_japanese_go_through_pairs_and_synthesize_with_no_spaces_put_in(language, tmp_path):
    if language == "ja":
        pytest.importorskip("nagisa")
    transcript = TRANSCRIPTS[language]
    batch = [aligned_row(transcript, language, f"manifest:{n}") for n in range(20)]
    out = render.build_samples(pa.Table.from_pylist(batch), pairs.PairsConfig(span_mean=3), pairs.plan_pairs, pairs.NAME)
    for document in map(json.loads, out[sample.ROW_JSON].to_pylist()):
        assert "".join(segment["text"] for segment in document["segments"][0::2]) == transcript
    commit_rows(tmp_path / "pairs", "p", stream.accepted(out, sample.ROW_SCHEMA))
    pairs.write_shards(pairs.PairsConfig(heldout_share=0.0), tmp_path / "pairs", serial)
    shards = data.open_folder(tmp_path / "pairs-shards")
    assert shards.max_units_per_word == 2.0  # per character or morpheme: the words synthesize counts

    def saved_model(folder: Path, max_positions: int = 4096) -> str:
        torch.manual_seed(0)
        model = t2t.new_model("t2t-tiny", shards.unit_vocab, max_positions=max_positions)
        with torch.no_grad():
            model.lm_head.weight[t2t.EOS] = 0  # a random model that always says something
        model.save_pretrained(folder)
        t2t.save_meta(folder, shards.unit_vocab, shards.tokenizer, shards.max_units_per_word, "toy")
        return str(folder)

    document = CORPUS[language]
    config = synthesize.SynthesizeConfig(model=saved_model(tmp_path / "t2t"), device="cpu", speech_ratio=0.5, span_mean=3)
    synthesize.preflight(config)
    made = synthesize.Synthesizer(config)(corpus_batch([document] * 8, language)).to_pylist()
    assert [item[stream.REJECT_REASON] for item in made] == [None] * 8  # whitespace splitting rejected them all
    words = split.split_words(document, language)
    for item in made:
        segments = json.loads(item[sample.ROW_JSON])[sample.SEGMENTS]
        assert item["words"] == len(words) and item["kind"] == "interleaved" and item["speech_words"] > 0
        # the text segments are the document's own stretches, in order, with speech between them
        pattern = "".join("(.+)" if s["modality"] == "speech" else re.escape(s["text"]) for s in segments)
        assert re.fullmatch(pattern, document), segments
        assert all(len(s["units"]) <= 2 * item["speech_words"] for s in segments if s["modality"] == "speech")
    # speech spans that stay text join the text around them as the document writes it
    config.model = saved_model(tmp_path / "t2t-small", max_positions=6)
    [alone] = synthesize.Synthesizer(config)(corpus_batch([document], language)).to_pylist()
    assert json.loads(alone[sample.ROW_JSON])[sample.SEGMENTS] == [{"modality": "text", "text": document, "units": None}]


def test_a_japanese_corpus_without_its_splitter_is_refused_in_one_line(tmp_path, monkeypatch):
    t2t.new_model("t2t-tiny", UNIT_VOCAB, max_positions=64).save_pretrained(tmp_path)
    t2t.save_meta(tmp_path, UNIT_VOCAB, "toy:0:k32:u32:0", 3.0, "toy")
    split._nagisa.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "nagisa", None)
    try:
        with pytest.raises(StageConfigError, match=re.escape('pip install "sylm-data[ja]"')):
            synthesize.preflight(synthesize.SynthesizeConfig(model=str(tmp_path), languages=["ja"]))
        with pytest.raises(Rejected) as rejected:
            synthesize.check_document(CORPUS["ja"], "ja", synthesize.SynthesizeConfig())
        assert rejected.value.reason == "language_unsupported" and "sylm-data[ja]" in rejected.value.detail
    finally:
        split._nagisa.cache_clear()
