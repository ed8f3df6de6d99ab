"""Shards published partition by partition: a rerun touches only what changed, and a reader never
finds the folder half way."""

import json
import threading
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from sylm_data.documents import render
from sylm_data.pipeline import shards
from sylm_data.schemas import sample, stream
from sylm_data.stages import interleave, pairs
from tests.conftest import commit_rows, serial
from tests.test_interleave import UNITS, WORDS, row, tokenized_rows

CONFIG = interleave.InterleaveConfig(shard_bytes=6000)


def commit_samples(folder: Path, partition: str, count: int, run_id: str = "run-1") -> None:
    rows = [row(WORDS, UNITS, id=f"manifest:{partition}-{n:03d}") for n in range(count)]
    out = interleave.transform(tokenized_rows(rows), CONFIG)
    commit_rows(folder, partition, stream.accepted(out, sample.ROW_SCHEMA), run_id)


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.glob("*.tar"))}


def keys(folder: Path) -> list[str]:
    index = json.loads((folder / shards.INDEX).read_text())
    listed = [str(folder / entry["name"]) for entry in index["shards"]]
    return [item["__key__"] for item in wds.WebDataset(listed, shardshuffle=False)]


def test_an_added_partition_writes_only_its_shards_and_the_same_input_gives_the_same_bytes(tmp_path):
    rows = tmp_path / "interleave"
    for partition in ("p1", "p2"):
        commit_samples(rows, partition, 40)
    target = tmp_path / "shards"
    interleave.write_shards(CONFIG, rows, serial)
    before = files(target)
    assert len(before) > 2 and all(name.startswith(("p1-", "p2-")) for name in before)

    commit_samples(rows, "p3", 25)
    summary = interleave.write_shards(CONFIG, rows, serial)
    after = files(target)
    assert {name: after[name] for name in before} == before  # same bytes, same mtimes
    assert any(name.startswith("p3-") for name in after)
    index = json.loads((target / shards.INDEX).read_text())
    assert summary["samples"] == index["total_samples"] == 105 == len(keys(target))
    assert index["total_bytes"] == sum(len(data) for data, _ in after.values())
    assert keys(target) == sorted(keys(target))  # partitions in order, each in key order

    again = tmp_path / "again"
    for partition, count in (("p1", 40), ("p2", 40), ("p3", 25)):
        commit_samples(again / "interleave", partition, count)
    interleave.write_shards(CONFIG, again / "interleave", serial)
    assert {name: data for name, (data, _) in files(again / "shards").items()} == {name: data for name, (data, _) in after.items()}
    assert (again / "shards" / shards.INDEX).read_bytes() == (target / shards.INDEX).read_bytes()


def test_a_recomputed_partition_is_rewritten_and_a_gone_one_dropped(tmp_path):
    rows = tmp_path / "interleave"
    for partition in ("p1", "p2"):
        commit_samples(rows, partition, 40)
    interleave.write_shards(CONFIG, rows, serial)
    commit_samples(rows, "p1", 10, run_id="run-2")  # recomputed with fewer samples
    (rows / "_done" / "p2.json").unlink()
    interleave.write_shards(CONFIG, rows, serial)
    target = tmp_path / "shards"
    assert {name.split("-")[0] for name in files(target)} == {"p1"}
    assert len(keys(target)) == 10 and not (target / shards.MANIFESTS / "p2.json").exists()


def test_a_reader_polling_during_reruns_always_finds_a_complete_index_and_its_shards(tmp_path):
    rows = tmp_path / "interleave"
    target = tmp_path / "shards"
    for partition in ("p1", "p2", "p3"):
        commit_samples(rows, partition, 30)
    interleave.write_shards(CONFIG, rows, serial)
    problems, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                index = json.loads((target / shards.INDEX).read_text())
                for entry in index["shards"]:
                    (target / entry["name"]).stat()
            except (OSError, ValueError, KeyError) as error:
                problems.append(repr(error))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for run in range(2, 8):
            commit_samples(rows, f"p{run + 2}", 15, run_id=f"run-{run}")  # added partitions
            commit_samples(rows, "p1", 30, run_id=f"run-{run}")  # one recomputed each time
            interleave.write_shards(CONFIG, rows, serial)
    finally:
        stop.set()
        reader.join()
    assert problems == []
    assert len(keys(target)) == 30 * 3 + 15 * 6


def test_partitions_of_two_tokenizers_are_refused(tmp_path):
    rows = tmp_path / "interleave"
    commit_samples(rows, "p1", 5)
    other = [row(WORDS, UNITS, id=f"manifest:q-{n}") | {"tokenizer": "mfcc:0:k16:u16:other"} for n in range(5)]
    commit_rows(rows, "p2", stream.accepted(interleave.transform(tokenized_rows(other), CONFIG), sample.ROW_SCHEMA))
    with pytest.raises(ValueError, match="one codebook"):
        interleave.write_shards(CONFIG, rows, serial)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=12), st.integers(1, 300))
def test_the_cap_on_samples_per_shard_gives_at_least_min_shards(partition_samples, min_shards):
    total = sum(partition_samples)
    cap = shards.samples_per_shard(total, min_shards)
    if min_shards == 1:
        assert cap is None
        return
    assert cap >= 1 and cap & (cap - 1) == 0  # a power of two: it moves only when the total passes a doubling
    assert sum(-(-count // cap) for count in partition_samples) >= min(min_shards, total)
    assert shards.samples_per_shard(total + 1, min_shards) in (cap, 2 * cap)


def loader_keys(folder: Path, workers: int) -> list[str]:
    """Every key a plain WebDataset pipeline under a DataLoader of `workers` processes yields."""
    listed = [str(folder / entry["name"]) for entry in json.loads((folder / shards.INDEX).read_text())["shards"]]
    dataset = wds.WebDataset(listed, shardshuffle=False).map(lambda item: item["__key__"])
    return list(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_min_shards_splits_a_folder_so_that_no_dataloader_worker_is_left_without_shards(tmp_path):
    rows = tmp_path / "interleave"
    commit_samples(rows, "p1", 40)
    roomy = interleave.InterleaveConfig(shard_bytes=2**30)
    interleave.write_shards(roomy, rows, serial)
    assert len(files(tmp_path / "shards")) == 1
    with pytest.raises(ValueError, match="fewer shards than workers"):  # webdataset's empty_check, in the idle worker
        loader_keys(tmp_path / "shards", 4)

    split = interleave.InterleaveConfig(shard_bytes=2**30, min_shards=4)
    interleave.write_shards(split, rows, serial)
    index = json.loads((tmp_path / "shards" / shards.INDEX).read_text())
    assert len(index["shards"]) >= 4 and {entry["samples"] for entry in index["shards"]} == {8}  # 40 // 4 -> 8
    assert sorted(loader_keys(tmp_path / "shards", 4)) == keys(tmp_path / "shards")
    assert len(keys(tmp_path / "shards")) == 40

    before = files(tmp_path / "shards")
    commit_samples(rows, "p2", 10)  # 50 samples: the cap stays 8, p1 is left alone
    interleave.write_shards(split, rows, serial)
    after = files(tmp_path / "shards")
    assert {name: after[name] for name in before} == before and len(after) == len(before) + 2
    commit_samples(rows, "p3", 20)  # 70 samples: 70 // 4 = 17 -> 16 a shard, every partition rewritten
    interleave.write_shards(split, rows, serial)
    index = json.loads((tmp_path / "shards" / shards.INDEX).read_text())
    assert max(entry["samples"] for entry in index["shards"]) == 16 and len(index["shards"]) >= 4
    assert len(keys(tmp_path / "shards")) == 70


def test_min_shards_counts_the_samples_each_pairs_folder_keeps(tmp_path):
    rows = [row(WORDS, UNITS, id=f"manifest:{n:03d}") for n in range(100)]
    out = render.build_samples(tokenized_rows(rows), pairs.PairsConfig(), pairs.plan_pairs, pairs.NAME)
    commit_rows(tmp_path / "pairs", "p", stream.accepted(out, sample.ROW_SCHEMA))
    summary = pairs.write_shards(pairs.PairsConfig(heldout_share=0.2, min_shards=5, shard_bytes=2**30), tmp_path / "pairs", serial)
    for name in ("pairs-shards", "pairs-heldout"):
        index = json.loads((tmp_path / name / shards.INDEX).read_text())
        assert len(index["shards"]) >= 5 and index["total_samples"] == summary[name], name


def one_by_one_stats(kind: str, words: int, speech_words: int, units: int) -> dict:
    """A sample's stats written plainly; a shard's are their sum (`shards.add_stat`)."""
    stats = {f"{kind}_samples": 1, "words": words, "units": units}
    if kind == "interleaved":
        tenth = min(int(10 * speech_words / words), 9) if words else 0
        stats |= {"interleaved_words": words, "interleaved_speech_words": speech_words,
                  "speech_share_histogram": {f"{tenth / 10:.1f}-{(tenth + 1) / 10:.1f}": 1}}
    return stats


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["interleaved", "speech", "text"]), st.integers(0, 60), st.integers(0, 60),
                          st.integers(0, 400)), min_size=1, max_size=40), st.data())
def test_a_shards_stats_are_the_sum_of_its_samples_stats(samples, data):
    from sylm_data.documents import publish

    samples = [(kind, words, min(speech, words), units) for kind, words, speech, units in samples]
    table = pa.table({sample.ROW_KIND: [s[0] for s in samples], sample.ROW_WORDS: [s[1] for s in samples],
                      sample.ROW_SPEECH_WORDS: [s[2] for s in samples], sample.ROW_UNITS: [s[3] for s in samples]})
    first = data.draw(st.integers(0, len(samples) - 1))
    end = data.draw(st.integers(first + 1, len(samples)))
    expected = {}
    for stats in (one_by_one_stats(*s) for s in samples[first:end]):
        for name, value in stats.items():
            expected[name] = shards.add_stat(expected.get(name), value)
    got = publish.sample_stats(table)(first, end)
    assert got == expected and json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
