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
from sylm_data.sources import READERS, SourceError, emilia
from sylm_data.sources.yodas2 import parse_utterance_id, segment_number
from sylm_data.stages import ingest
from tests.conftest import emilia_members, write_tar


def read_all(source: str, inputs: list[str]) -> pa.Table:
    """Every partition's records, through ingest, as one in-flight table."""
    tables = []
    for partition in READERS[source].partitions(inputs):
        for batch in read_source_partition(partition, "ingest", batch_rows=5):
            tables.append(ingest.transform(batch, ingest.IngestConfig()))
    return pa.concat_tables(tables)


def kept(table: pa.Table) -> list[dict]:
    return [row for row in table.to_pylist() if row[stream.REJECT_REASON] is None]


def place(row: dict) -> tuple:
    """The utterance's recording and its place there: (recording, recording_start_ms, segment_index)."""
    return row["recording"], row["recording_start_ms"], row["segment_index"]


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
    # the recording is the source unit (namespaced like the id), the place its W number
    assert [place(row) for row in rows[3:6]] == [("emilia:EN_B00000_S00000", None, 3),
                                                 ("emilia:EN_B00000_S00010", None, 0), ("emilia:EN_B00000_S00010", None, 1)]
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
    assert [place(row) for row in rows] == [(f"emilia-yodas:Yt-0000{n // 3}_Qz", None, n % 3) for n in range(6)]


@pytest.mark.parametrize(("key", "yodas", "found"), [
    ("EN_B00000_S00000_W000000", False, ("EN_B00000_S00000", 0)),
    ("ZH_B00012_S01234_W000107", False, ("ZH_B00012_S01234", 107)),
    ("EN_Yt-00000_Qz_W000006", True, ("Yt-00000_Qz", 6)),
    ("EN_a_W12-x_b_W000002", True, ("a_W12-x_b", 2)),  # only the last _W part is the segment
    ("EN_B00000_S00000", False, None),
    ("EN_B00000_W000001", False, None),
    ("emilia/EN_B00000_S00000_W000001", False, None),
    ("EN_B00000_S00000_W" + "1" * 19, False, None),  # beyond int64
    ("EN_B00000_S00000_W00000\u0663", False, None),  # a digit, but not an ASCII one
    ("EN_Yt-00000_Qz", True, None),
    ("EN_Yt.00000_W000001", True, None),
])
def test_the_recording_and_place_of_emilia_keys(key, yodas, found):
    assert emilia.place(key, yodas) == found


def test_keys_off_the_layout_have_no_recording_and_are_kept(tmp_path, utterances):
    members = emilia_members(utterances[0], "clip-7") + emilia_members(utterances[1], "EN_B00000_S00000_Wx")
    write_tar(tmp_path / "EN-B000000.tar", members)
    for source in ("emilia", "emilia-yodas"):
        rows = read_all(source, [str(tmp_path / "*.tar")]).to_pylist()
        assert [row[stream.REJECT_REASON] for row in rows] == [None, None]
        assert [place(row) for row in rows] == [(None, None, None)] * 2


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
        assert place(row) == (f"yodas2:{audio_id}", start_ms, segment_number(row["id"].split(":", 1)[1]))
        cut = audio.decode(row["audio"]).samples
        reference = audio.decode(original.audio).samples
        n = min(len(cut), len(reference)) - 480
        correlation = (cut[:n] @ reference[:n]) / ((cut[:n] @ cut[:n]) * (reference[:n] @ reference[:n])) ** 0.5
        assert correlation > 0.95
    # four utterances per long recording, in the order they were spoken
    starts: dict[str, list[int]] = {}
    for row in rows:
        starts.setdefault(row["recording"], []).append(row["recording_start_ms"])
    assert len(starts) == 3 and all(len(s) == 4 and s == sorted(set(s)) for s in starts.values())


def test_yodas2_utterance_ids_parse_with_dashes_in_the_video_id():
    assert parse_utterance_id("Lyy-cIbMfMM-00001-00004329-00004529") == ("Lyy-cIbMfMM", 43290, 45290)
    assert segment_number("Lyy-cIbMfMM-00017-00004329-00004529") == 17
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


def test_manifest_lines_name_their_recording_and_place(tmp_path, utterances):
    for index in range(3):
        (tmp_path / f"{index}.mp3").write_bytes(utterances[index].audio)
    places = [{"recording": "talk.1", "start_ms": 0}, {"recording": 17, "segment": 4, "start_ms": 4250.4, "room": "A"}, {}]
    lines = [{"id": f"u{n}", "audio": f"{n}.mp3", "text": utterances[n].text, "language": "en"} | fields
             for n, fields in enumerate(places)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = read_all("manifest", [str(tmp_path / "m.jsonl")]).to_pylist()
    assert [row[stream.REJECT_REASON] for row in rows] == [None] * 3
    assert [place(row) for row in rows] == [  # namespaced and escaped as ids are
        ("manifest:talk%2E1", 0, None), ("manifest:17", 4250, 4), (None, None, None)]
    assert json.loads(rows[1]["meta"]) == {"room": "A"}


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
