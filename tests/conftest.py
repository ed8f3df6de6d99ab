import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from sylm_data.pipeline.output import read_rows
from sylm_data.pipeline.shards import read_members
from sylm_data.sample import layouts


@pytest.fixture(scope="session")
def utterances() -> list[layouts.SampleUtterance]:
    return layouts.sample_utterances()


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the in-process pipeline tests (the runner reuses a running Ray)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")  # logical: room for 2 actors and their tasks
    yield
    ray.shutdown()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            layouts.add_member(archive, name, data)
    return path


def emilia_members(utterance: layouts.SampleUtterance, key: str, **fields) -> list[tuple[str, bytes]]:
    document = {"id": key, "wav": f"{key}.mp3", "text": " " + utterance.text, "duration": utterance.duration_s,
                "speaker": "S1", "language": "en", "dnsmos": 3.3} | fields
    return [(f"{key}.mp3", utterance.audio), (f"{key}.json", json.dumps(document).encode())]


def shard_samples(folder: Path) -> list[tuple[str, dict]]:
    """Every sample of a shard folder's tars, in order: its key and its JSON read."""
    return [(key, json.loads(data)) for key, extension, data in read_members(folder) if extension == "json"]


def read_parquet(folder: Path) -> pa.Table:
    return read_rows(folder) if folder.exists() else pa.table({})


def wav_bytes(samples, rate: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


def serial(function, items: list) -> list:
    """A finalize's `parallel` in-process, for tests that call a finalize directly."""
    return [function(item) for item in items]


def commit_rows(folder: Path, partition: str, table: pa.Table, run_id: str = "test-run") -> None:
    """`table` as a committed partition of the stage folder `folder` (its file and its marker)."""
    import pyarrow.parquet as pq

    (folder / partition).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / partition / "rows.parquet")
    (folder / "_done").mkdir(exist_ok=True)
    (folder / "_done" / f"{partition}.json").write_text(json.dumps({"run_id": run_id, "rows_out": table.num_rows, "config_hash": "test-config"}))
