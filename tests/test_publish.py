"""Shards published partition by partition: a rerun touches only what changed, and a reader never
finds the folder half way."""

import json
import threading
from pathlib import Path

import pytest
import webdataset as wds

from sylm_data.pipeline import shards
from sylm_data.schemas import sample, stream
from sylm_data.stages import interleave
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
