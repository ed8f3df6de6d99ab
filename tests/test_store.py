"""The output store's parts on their own: ids, partition names, the duplicate index, the lock, the
config hash; and a run on a disk that fills up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import duplicates, lock, output
from sylm_data.pipeline.partitions import MAX_ID_CHARS, record_id
from sylm_data.sample import layouts
from sylm_data.sources import READERS, SourceError
from sylm_data.sources.base import expand, static_prefix
from tests.conftest import read_parquet


def test_ids_are_injective_and_fit_a_tar_member_name():
    keys = ["a.b", "a_b", "a%2Eb", "a%b", "x" * 300, "x" * 299 + "y", "dir/file.name.ext"]
    ids = [record_id("emilia", key) for key in keys]
    assert len(set(ids)) == len(ids)
    assert all("." not in sample_id and len(sample_id) <= MAX_ID_CHARS for sample_id in ids)
    assert record_id("emilia", "EN_B00000_S00000_W000000") == "emilia:EN_B00000_S00000_W000000"


def test_partitions_are_named_below_their_dataset_root(tmp_path):
    corpus = tmp_path / "data" / "emilia"
    for name in ("EN/a.tar", "DE/a.tar"):
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_bytes(b"")
    (tmp_path / "link").symlink_to(corpus)
    by_glob = READERS["emilia"].partitions([str(corpus / "*" / "*.tar")])
    by_link = READERS["emilia"].partitions([str(tmp_path / "link" / "*" / "*.tar")])
    by_root = READERS["emilia"].partitions([str(corpus / "EN" / "a.tar"), str(corpus / "DE" / "a.tar")], root=str(corpus))
    assert sorted(p.id for p in by_glob) == sorted(p.id for p in by_link) == sorted(p.id for p in by_root)
    assert len({p.id for p in by_glob}) == 2
    assert static_prefix("/data/emilia/*/*.tar") == "/data/emilia" and static_prefix("/data/x.tar") == "/data"
    assert [found.relative for found in expand([str(corpus / "**" / "*.tar")])] == ["DE/a.tar", "EN/a.tar"]
    with pytest.raises(SourceError, match="set ingest.root"):
        expand([str(corpus / "EN" / "*.tar"), str(corpus / "DE" / "*.tar")])
    with pytest.raises(SourceError, match="not below the dataset root"):
        expand([str(corpus / "EN" / "a.tar")], root=str(tmp_path / "elsewhere"))


def test_the_first_occurrence_is_in_a_committed_partition_else_the_lowest_partition(tmp_path):
    ids = {"p1": ["a", "b", "c"], "p2": ["b", "d"], "p3": ["a", "b", "e"]}
    for partition, held in ids.items():
        duplicates.write_ids(held, duplicates.ids_file(tmp_path, partition))
    found = [r for bucket in range(duplicates.BUCKETS)
             for r in duplicates.repeats_in_bucket(bucket, str(tmp_path), sorted(ids), committed=[])]
    assert sorted((r["partition"], r["id"], r["first"]) for r in found) == [
        ("p2", "b", "p1"), ("p3", "a", "p1"), ("p3", "b", "p1")]
    found = [r for bucket in range(duplicates.BUCKETS)
             for r in duplicates.repeats_in_bucket(bucket, str(tmp_path), sorted(ids), committed=["p3"])]
    assert sorted((r["partition"], r["id"], r["first"]) for r in found) == [
        ("p1", "a", "p3"), ("p1", "b", "p3"), ("p2", "b", "p3")]
    assert json.loads(duplicates.by_partition(found)["p1"]) == {"a": "p3", "b": "p3"}
    assert pq.read_table(duplicates.ids_file(tmp_path, "p3")).schema.equals(duplicates.IDS_SCHEMA)


def test_a_live_holder_keeps_the_lock_a_dead_one_loses_it_and_a_taken_lock_is_noticed(tmp_path):
    first = lock.RunLock(tmp_path, "run-1")
    first.acquire()
    with pytest.raises(lock.LockHeld, match="in use by run run-1"):
        lock.RunLock(tmp_path, "run-2").acquire()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = json.loads((tmp_path / lock.NAME).read_text()) | {"pid": dead.pid}
    (tmp_path / lock.NAME).write_text(json.dumps(holder))  # as if run-1's process had been killed
    second = lock.RunLock(tmp_path, "run-2")
    second.acquire()
    with pytest.raises(lock.LockLost, match="run-1 lost the lock"):
        first.check()
    first.release()  # leaves run-2's lock alone
    assert second.holds()
    second.release()
    assert not (tmp_path / lock.NAME).exists()

    (tmp_path / lock.NAME).write_text('{"run_id": ')  # a lock half written by a killed run
    third = lock.RunLock(tmp_path, "run-3")
    third.acquire()
    assert third.holds()
    third.release()


def test_speed_only_fields_leave_the_config_hash_alone():
    stages = ["ingest", "align", "tokenize"]
    base = config_module.load(None, []).stage_hash(stages)
    scaled = ["ingest.workers=4", "align.actors=3", "align.batch_size=2", "align.gpus_per_actor=0.5",
              "tokenize.actors=2", "tokenize.batch_size=3", "run.batch_rows=7"]
    assert config_module.load(None, scaled).stage_hash(stages) == base
    assert config_module.load(None, ["ingest.min_duration_ms=900"]).stage_hash(stages) != base
    assert config_module.load(None, ["align.backend='pocketsphinx'"]).stage_hash(stages) != base


def test_a_staged_file_is_named_by_its_rows():
    ids = pa.chunked_array([["emilia:a", "emilia:b"]])
    assert output.staged_name(ids) == output.staged_name(pa.chunked_array([["emilia:a"], ["emilia:b"]]))
    assert output.staged_name(ids) != output.staged_name(pa.chunked_array([["emilia:a"]]))


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root and mount rights needed; skipped without them)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def ingest_command(corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sylm_data.cli", "run", "--stage", "ingest", "--source", "emilia",
            "--input", str(corpus / "*.tar"), "--output", str(out), "--set", "run.num_cpus=2"]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_rerun_after_freeing_space_completes(tmp_path, utterances, small_disk):
    corpus = tmp_path / "corpus"
    layouts.write_emilia(corpus, utterances * 6, shard_size=6)
    assert sum(f.stat().st_size for f in corpus.iterdir()) > 2 * 3 * 2**20 / 3
    reference = tmp_path / "reference"
    subprocess.run(ingest_command(corpus, reference), check=True, capture_output=True)

    out = small_disk / "out"
    full = subprocess.run(ingest_command(corpus, out), capture_output=True, text=True)
    assert full.returncode == 2, full.stderr[-2000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no space left on the device of {out}: free space, then rerun the same command to resume"]
    assert "Traceback" not in full.stderr

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    subprocess.run(ingest_command(corpus, out), check=True, capture_output=True)
    for folder in ("ingest", "rejects/ingest"):
        expected, got = read_parquet(reference / folder), read_parquet(out / folder)
        assert got.num_rows == expected.num_rows
        if got.num_rows:
            assert got.sort_by("id").equals(expected.sort_by("id"))
    assert not list(out.rglob(".tmp/*/*")) and not (out / lock.NAME).exists()
    assert os.listdir(out / "ingest" / "_done")
