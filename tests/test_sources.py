"""Each source reader on its published layout, built from the bundled espeak-ng sample."""

import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from sylm_data import audio
from sylm_data.pipeline.partitions import read_source_partition
from sylm_data.sample import MANIFEST, layouts
from sylm_data.schemas import stream
from sylm_data.sources import READERS, SourceError
from sylm_data.sources.yodas2 import parse_utterance_id
from sylm_data.stages import ingest


def read_all(source: str, inputs: list[str]) -> pa.Table:
    """Every partition's records, through ingest, as one in-flight table."""
    tables = []
    for partition in READERS[source].partitions(inputs):
        for batch in read_source_partition(partition, "ingest", batch_rows=5):
            tables.append(ingest.transform(batch, ingest.IngestConfig()))
    return pa.concat_tables(tables)


def kept(table: pa.Table) -> list[dict]:
    return [row for row in table.to_pylist() if row[stream.REJECT_REASON] is None]


def test_emilia_tars_give_every_utterance_with_normalised_fields(tmp_path, utterances):
    tars = layouts.write_emilia(tmp_path, utterances, shard_size=10)
    table = read_all("emilia", [str(tmp_path / "*.tar")])
    rows = kept(table)
    assert len(rows) == len(utterances) == table.num_rows
    first = rows[0]
    assert first["id"] == "emilia:EN_B00000_S00000_W000000"
    assert first["text"] == utterances[0].text  # the leading space Emilia ships is gone
    assert first["language"] == "en" and first["audio_format"] == "mp3" and first["sample_rate"] == 24_000
    assert first["audio"] == utterances[0].audio  # stored as found, never re-encoded
    assert abs(first["duration_ms"] - utterances[0].duration_s * 1000) <= 1
    assert pytest.approx(first["quality"], abs=1e-6) == 3.2
    assert json.loads(first["meta"]) == {"wav": "EN_B00000/EN_B00000_S00000/mp3/EN_B00000_S00000_W000000.mp3"}
    # as published: W restarts at 0 for each source unit, tar NN holds the units with S mod 10 = NN mod 10
    assert [row["id"].split(":")[1] for row in rows[:6]] == [
        "EN_B00000_S00000_W000000", "EN_B00000_S00000_W000001", "EN_B00000_S00000_W000002",
        "EN_B00000_S00000_W000003", "EN_B00000_S00010_W000000", "EN_B00000_S00010_W000001"]
    assert rows[10]["id"] == "emilia:EN_B00000_S00001_W000000"
    assert all(row["speaker"] == row["id"].split(":")[1].rsplit("_W", 1)[0] for row in rows)
    # one partition per tar; totals sit on each partition's last record
    totals = [row[stream.PARTITION_TOTAL] for row in table.to_pylist() if row[stream.PARTITION_TOTAL]]
    assert totals == [10, 10, 4] and len(tars) == 3


def test_emilia_yodas_uses_underscore_id_and_keeps_phone_count(tmp_path, utterances):
    layouts.write_emilia(tmp_path, utterances[:6], yodas=True, shard_size=4)
    rows = kept(read_all("emilia-yodas", [str(tmp_path / "*.tar")]))
    assert len(rows) == 6
    assert all(row["id"].startswith("emilia-yodas:EN_") and "_W0000" in row["id"] for row in rows)
    assert all("phone_count" in json.loads(row["meta"]) for row in rows)
    # YouTube ids keep their '-' and '_'; the speaker is pyannote's label within the video
    assert rows[0]["id"] == "emilia-yodas:EN_Yt-00000_Qz_W000000"
    assert rows[0]["speaker"] == "EN_Yt-00000_Qz_SPEAKER_00" and rows[1]["speaker"] == "EN_Yt-00000_Qz_SPEAKER_01"
    assert [json.loads(row["meta"])["video_id"] for row in rows] == ["Yt-00000_Qz"] * 3 + ["Yt-00001_Qz"] * 3


def test_yodas2_cuts_each_utterance_out_of_its_recording(tmp_path, utterances):
    archives = layouts.write_yodas2(tmp_path, utterances[:12], per_recording=4)
    assert len(archives) == 2
    # as published: ./<audio_id>.wav at 24 kHz, a duration file beside the text file
    with tarfile.open(archives[0]) as archive:
        names = archive.getnames()
        wav = archive.extractfile(names[0]).read()
    assert names == ["./Vid000-00x.wav", "./Vid000-01x.wav"]
    assert audio.sniff_format(wav) == "wav" and audio.decode(wav).sample_rate == 24_000
    assert (tmp_path / "data/en000/duration/00000000.txt").read_text().startswith("Vid000-00x ")
    table = read_all("yodas2", [str(tmp_path / "data/en000/audio/*.tar.gz")])
    rows = kept(table)
    assert len(rows) == 12 == table.num_rows
    by_text = {u.text: u for u in utterances}
    for row in rows:
        original = by_text[row["text"]]
        assert row["language"] == "en" and row["audio_format"] == "flac"
        # centisecond boundaries: the cut is the utterance to within 10 ms
        assert abs(row["duration_ms"] - original.duration_s * 1000) <= 12
        audio_id, start_ms, end_ms = parse_utterance_id(row["id"].split(":", 1)[1])
        assert json.loads(row["meta"]) == {"audio_id": audio_id, "start_ms": start_ms, "end_ms": end_ms,
                                           "source_format": "wav", "subset": "en000"}
        assert end_ms - start_ms - 10 <= row["duration_ms"] <= end_ms - start_ms
        cut = audio.decode(row["audio"]).samples
        reference = audio.decode(original.audio).samples
        n = min(len(cut), len(reference)) - 480
        correlation = (cut[:n] @ reference[:n]) / ((cut[:n] @ cut[:n]) * (reference[:n] @ reference[:n])) ** 0.5
        assert correlation > 0.95


def test_yodas2_utterance_ids_parse_with_dashes_in_the_video_id():
    assert parse_utterance_id("Lyy-cIbMfMM-00001-00004329-00004529") == ("Lyy-cIbMfMM", 43290, 45290)
    with pytest.raises(ValueError):
        parse_utterance_id("no-timing-here")


def test_yodas2_rejects_inputs_outside_its_layout(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(SourceError, match="audio/NNNNNNNN.tar.gz"):
        READERS["yodas2"].partitions([str(tmp_path / "x.tar.gz")])


def test_manifest_reads_paths_relative_to_the_manifest(utterances):
    rows = kept(read_all("manifest", [str(MANIFEST)]))
    assert [row["id"] for row in rows] == [f"manifest:{u.key}" for u in utterances]
    assert rows[3]["speaker"] == utterances[3].speaker


def test_a_glob_that_matches_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no input matches"):
        READERS["emilia"].partitions([str(tmp_path / "*.tar")])


def _hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> None:
    """A huggingface_hub cache holding one snapshot of a dataset repo, as the hub client lays it out."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / "hub" / f"datasets--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for name, data in files.items():
        path = repo_dir / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_hf_inputs_resolve_through_the_hub_cache(tmp_path, utterances, monkeypatch):
    tars = layouts.write_emilia(tmp_path / "built", utterances[:8], shard_size=4)
    files = {f"Emilia/EN/{tar.name}": tar.read_bytes() for tar in tars} | {"Emilia/DE/DE-B000000.tar": b""}
    _hub_cache(tmp_path / "hf", "amphion/Emilia-Dataset", files)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        partitions = READERS["emilia"].partitions(["hf://amphion/Emilia-Dataset/Emilia/EN/*.tar"])
        assert [p.path for p in partitions] == [  # the default branch, resolved to the commit read
            "hf://amphion/Emilia-Dataset@0123456789abcdef0123456789abcdef01234567/Emilia/EN/EN-B000000.tar",
            "hf://amphion/Emilia-Dataset@0123456789abcdef0123456789abcdef01234567/Emilia/EN/EN-B000001.tar",
        ]
        rows = kept(read_all("emilia", ["hf://amphion/Emilia-Dataset/Emilia/EN/*.tar"]))
        assert len(rows) == 8
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)
    assert not os.environ.get("HF_HUB_OFFLINE")
