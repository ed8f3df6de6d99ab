"""kill -9 a real run mid-way, run the same command again: the same final rows, nothing recomputed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sylm_data.sample import layouts
from tests.conftest import read_parquet

pytestmark = pytest.mark.slow


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sylm_data.cli", *args]


def run_command(corpus, out) -> list[str]:
    return cli("run", "--stage", "ingest", "--source", "emilia", "--input", str(corpus / "*.tar"), "--output", str(out),
               "--set", "run.num_cpus=2")


def markers(out) -> dict[str, str]:
    folder = out / "ingest" / "_done"
    return {p.name: json.loads(p.read_text())["run_id"] for p in folder.glob("*.json")} if folder.exists() else {}


def test_a_killed_run_resumes_to_the_same_rows(tmp_path, utterances):
    corpus = tmp_path / "corpus"
    layouts.write_emilia(corpus, utterances * 8, shard_size=6)  # 32 partitions
    partitions = len(list(corpus.glob("*.tar")))

    reference = tmp_path / "reference"
    subprocess.run(run_command(corpus, reference), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(run_command(corpus, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 240
    while not markers(killed) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    process.wait()
    done_before = markers(killed)
    assert 0 < len(done_before) < partitions, "the kill must land mid-run"

    finished = subprocess.run(run_command(corpus, killed), check=True, capture_output=True, text=True)
    assert f"{len(done_before)} already done" in finished.stdout
    after = markers(killed)
    assert len(after) == partitions
    assert all(after[name] == run_id for name, run_id in done_before.items())  # not recomputed

    for folder in ("ingest", "rejects/ingest"):
        expected, got = read_parquet(reference / folder), read_parquet(killed / folder)
        assert got.num_rows == expected.num_rows
        if got.num_rows:
            assert got.sort_by("id").equals(expected.sort_by("id"))
    ids = read_parquet(killed / "ingest")["id"].to_pylist()
    assert len(ids) == len(set(ids))
