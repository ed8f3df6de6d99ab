"""interleave: chunking properties, the speech ratio, sample kinds, determinism, shards end to end."""

import json

import numpy as np
import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import runner
from sylm_data.pipeline.stage import Rejected
from sylm_data.sample import MANIFEST
from sylm_data.schemas import sample, stream, tokenized
from sylm_data.stages import interleave, spans


@st.composite
def timed_utterance(draw):
    """Words with gaps between them, and contiguous units on a 20 ms grid covering the audio."""
    word_count = draw(st.integers(1, 25))
    position, word_starts, word_ends = draw(st.integers(0, 300)), [], []
    for _ in range(word_count):
        position += draw(st.integers(0, 200))
        word_starts.append(position)
        position += draw(st.integers(40, 600))
        word_ends.append(position)
    duration = position + draw(st.integers(0, 400))
    frames = -(-duration // 20)
    cuts = sorted(draw(st.sets(st.integers(1, max(frames - 1, 1)), max_size=frames // 3)))
    edges = [0, *[c * 20 for c in cuts if c < frames], frames * 20]
    return word_starts, word_ends, edges[:-1], edges[1:]


@settings(max_examples=200, deadline=None)
@given(timed_utterance(), st.sampled_from([0, 10, 40]))
def test_chunks_keep_every_word_and_unit_once_and_cut_on_both_grids(utterance, tolerance):
    word_starts, word_ends, unit_starts, unit_ends = utterance
    cuts = spans.word_cuts(word_starts, word_ends, unit_starts, unit_ends, tolerance)
    pieces = spans.chunks(len(word_starts), len(unit_starts), cuts)
    assert [p.first_word for p in pieces] == [0] + [p.end_word for p in pieces[:-1]] and pieces[-1].end_word == len(word_starts)
    assert [p.first_unit for p in pieces] == [0] + [p.end_unit for p in pieces[:-1]] and pieces[-1].end_unit == len(unit_starts)
    for piece in pieces[1:]:
        boundary = unit_starts[piece.first_unit]
        assert unit_ends[piece.first_unit - 1] == boundary
        assert word_ends[piece.first_word - 1] - tolerance <= boundary <= word_starts[piece.first_word] + tolerance
    assert all(p.words > 0 for p in pieces)


def nearest_cuts(word_starts, word_ends, unit_starts, unit_ends, tolerance):
    """Obviously correct: for each gap, every unit boundary within tolerance, the nearest to its middle."""
    cuts = {}
    for k in range(1, len(word_starts)):
        middle = (word_ends[k - 1] + word_starts[k]) / 2
        fitting = [j for j in range(1, len(unit_starts)) if unit_ends[j - 1] == unit_starts[j]
                   and word_ends[k - 1] - tolerance <= unit_starts[j] <= word_starts[k] + tolerance]
        if fitting:
            cuts[k] = min(fitting, key=lambda j: (abs(unit_starts[j] - middle), j))
    return cuts


@settings(max_examples=100, deadline=None)
@given(st.lists(timed_utterance(), min_size=1, max_size=5), st.sampled_from([0, 10, 40]))
def test_cuts_of_a_batch_are_each_utterances_nearest_cuts(utterances, tolerance):
    word_starts, word_ends, unit_starts, unit_ends = zip(*utterances)
    got = spans.batch_word_cuts([len(w) for w in word_starts], sum(word_starts, []), sum(word_ends, []),
                                [len(u) for u in unit_starts], sum(unit_starts, []), sum(unit_ends, []), tolerance)
    assert got == [nearest_cuts(*utterance, tolerance) for utterance in utterances]


def test_sentence_granularity_cuts_only_at_sentence_ends():
    text = "The river ran. It reached the sea, slowly!"
    words = ["The", "river", "ran", "It", "reached", "the", "sea", "slowly"]
    assert spans.sentence_ends(text, words) == {3, 8}
    cuts = {k: k for k in range(1, 8)}  # pretend a unit boundary sits in every gap
    assert [(c.first_word, c.end_word) for c in spans.chunks(8, 8, cuts, {3, 8})] == [(0, 3), (3, 8)]


def test_the_speech_ratio_over_a_corpus_is_within_two_points_of_the_target():
    rng = np.random.default_rng(0)
    spoken = total = 0
    for index in range(3000):
        chunk_words = list(rng.integers(1, 4, size=rng.integers(3, 40)))
        choice = spans.choose_speech(chunk_words, 0.3, 10.0, interleave.sample_rng(0, f"u{index}"))
        spoken += sum(w for w, s in zip(chunk_words, choice) if s)
        total += sum(chunk_words)
    assert abs(spoken / total - 0.3) <= 0.02


def row(words, units, text="The river ran past the mill.", id="manifest:x"):
    return {"id": id, "source": "manifest", "text": text, "language": "en",
            "words": [{"text": w, "start_ms": s, "end_ms": e} for w, s, e in words],
            "units": [u for u, _, _ in units], "unit_start_ms": [s for _, s, _ in units], "unit_end_ms": [e for _, _, e in units],
            "tokenizer": "mfcc:0:k16:u16:abc"}


WORDS = [("The", 0, 100), ("river", 120, 400), ("ran", 420, 600), ("past", 620, 800), ("the", 820, 900), ("mill", 920, 1200)]
UNITS = [(5, 0, 110), (6, 110, 410), (7, 410, 610), (8, 610, 810), (9, 810, 910), (10, 910, 1200)]


def test_samples_follow_the_contract_and_keep_the_transcript():
    config = interleave.InterleaveConfig(kinds={"interleaved": 1.0}, span_mean=2)
    built = interleave.build_sample(interleave.Utterance.from_row(row(WORDS, UNITS)), config)
    document = json.loads(built["json"])
    sample.validate(document)
    assert built["kind"] == document["kind"] == "interleaved"
    texts = [s["text"] for s in document["segments"] if s["modality"] == "text"]
    assert texts and all(text in "The river ran past the mill." for text in texts)  # slices of the transcript
    units = [u for s in document["segments"] if s["modality"] == "speech" for u in s["units"]]
    assert built["speech_words"] > 0 and built["units"] == len(units)
    last = document["segments"][-1]
    if last["modality"] == "text":
        assert last["text"].endswith("mill.")  # punctuation comes from the transcript
    else:
        assert last["units"][-1] == 10
    assert units == [u for u, _, _ in UNITS if u in units]  # speech units keep their order
    assert built == interleave.build_sample(interleave.Utterance.from_row(row(WORDS, UNITS)), config)  # same id, same sample
    speech_only = interleave.build_sample(interleave.Utterance.from_row(row(WORDS, UNITS)), interleave.InterleaveConfig(kinds={"speech": 1.0}))
    assert json.loads(speech_only["json"])["segments"] == [{"modality": "speech", "units": [5, 6, 7, 8, 9, 10]}]
    text_only = interleave.build_sample(interleave.Utterance.from_row(row(WORDS, UNITS)), interleave.InterleaveConfig(kinds={"text": 1.0}))
    assert json.loads(text_only["json"])["segments"] == [{"modality": "text", "text": "The river ran past the mill."}]


@pytest.mark.parametrize(("words", "units", "reason"), [
    ([], UNITS, "no_words"), (WORDS, [], "no_units"), (WORDS, [(1, 5000, 6000)], "spans_disjoint")])
def test_unusable_rows_are_rejected(words, units, reason):
    with pytest.raises(Rejected) as rejected:
        interleave.build_sample(interleave.Utterance.from_row(row(words, units)), interleave.InterleaveConfig())
    assert rejected.value.reason == reason


def test_the_batch_transform_rejects_per_row_and_passes_upstream_rejects_through():
    import pyarrow as pa

    rows = [row(WORDS, UNITS, id="manifest:good"), row(WORDS, [], id="manifest:no_units"),
            row(WORDS, [(1, 5000, 6000)], id="manifest:disjoint"), row([], UNITS, id="manifest:no_words"),
            row(WORDS, UNITS, id="manifest:upstream") | {"words": None, "units": None},
            row(WORDS, UNITS, id="manifest:mismatched") | {"unit_end_ms": [110]}]
    for item in rows:
        item |= {"partition": "p", "partition_total": 5, "reject_stage": None, "reject_reason": None, "reject_detail": None}
    rows[-2] |= {"reject_stage": "align", "reject_reason": "align_failed", "reject_detail": "x"}
    out = interleave.transform(pa.Table.from_pylist(rows), interleave.InterleaveConfig()).to_pylist()
    assert [r["reject_reason"] for r in out] == [None, "no_units", "spans_disjoint", "no_words", "align_failed", "no_units"]
    assert [r["reject_stage"] for r in out] == [None, "interleave", "interleave", "interleave", "align", "interleave"]
    assert out[0]["json"] == interleave.build_sample(interleave.Utterance.from_row(rows[0]), interleave.InterleaveConfig())["json"]
    assert out[0]["tokenizer"] == "mfcc:0:k16:u16:abc"
    assert all(r["json"] is None and r["kind"] is None and r["tokenizer"] is None for r in out[1:])
    assert [r["id"] for r in out] == [r["id"] for r in rows] and {r["partition_total"] for r in out} == {5}


@pytest.mark.usefixtures("ray_session")
def test_shards_are_byte_identical_however_the_input_is_partitioned(tmp_path):
    lines = MANIFEST.read_text().splitlines()
    split = tmp_path / "split"
    split.mkdir()
    for part in range(3):
        (split / f"part{part}.jsonl").write_text("\n".join(lines[part::3]) + "\n")
        (split / "audio").mkdir(exist_ok=True)
    for audio in (MANIFEST.parent / "audio").iterdir():
        (split / "audio" / audio.name).write_bytes(audio.read_bytes())

    def pipeline(out, inputs, codebook):
        cfg = config_module.load(None, ["align.backend='pocketsphinx'", "codebook.clusters=32", "codebook.encoder='mfcc'", "tokenize.encoder='mfcc'",
                                        f"tokenize.codebook='{codebook}'", "interleave.shard_bytes=20000"])
        cfg.stages["ingest"].source = "manifest"
        cfg.stages["ingest"].inputs = [str(p) for p in inputs]
        quiet = {"log": lambda line: None}
        runner.run(cfg, ["ingest", "align"], str(out), **quiet)
        if not (codebook / "manifest.json").exists():
            runner.run(cfg, ["codebook"], str(out), **quiet)
        return runner.run(cfg, ["tokenize", "interleave"], str(out), **quiet).record

    codebook = tmp_path / "one" / "codebook"
    one = pipeline(tmp_path / "one", [MANIFEST], codebook)
    three = pipeline(tmp_path / "three", sorted(split.glob("*.jsonl")), codebook)
    assert one["partitions"]["processed"] == 1 and three["partitions"]["processed"] == 3
    shards = sorted((tmp_path / "one" / "shards").glob("shard-*.tar"))
    assert len(shards) > 1
    for shard in shards:
        assert shard.read_bytes() == (tmp_path / "three" / "shards" / shard.name).read_bytes()
    index = json.loads((tmp_path / "one" / "shards" / "index.json").read_text())
    read = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
    assert len(read) == index["total_samples"] == one["this_run"][-1]["out"]
    for item in read:
        sample.validate(json.loads(item["json"]))
    assert all("speech_text_ratio" in shard["stats"] for shard in index["shards"])
    assert index["unit_vocab"] == 32 and index["tokenizer"].startswith("mfcc:0:k32:u32:")


def test_a_tokenizer_id_names_its_unit_vocabulary():
    assert tokenized.unit_vocabulary(tokenized.tokenizer_id("hf/C:/models/hubert", 9, 500, 100, "ab12")) == 100
    with pytest.raises(ValueError, match="not a tokenizer id"):
        tokenized.unit_vocabulary("mfcc:0:k32:abc")


def test_shards_refuse_samples_of_two_tokenizers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [row(WORDS, UNITS, id=f"manifest:{n}") | {"tokenizer": f"mfcc:0:k16:u16:{n}"} for n in ("a", "b")]
    for item in rows:
        item |= {"partition": "p", "partition_total": 2, "reject_stage": None, "reject_reason": None, "reject_detail": None}
    out = interleave.transform(pa.Table.from_pylist(rows), interleave.InterleaveConfig())
    (tmp_path / "interleave" / "p").mkdir(parents=True)
    pq.write_table(stream.accepted(out, sample.ROW_SCHEMA), tmp_path / "interleave" / "p" / "00000.parquet")
    with pytest.raises(ValueError, match="2 tokenizers"):
        interleave.write_shards(interleave.InterleaveConfig(), tmp_path / "interleave")
