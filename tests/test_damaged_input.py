"""Damaged input never stops a run: each case ends as a reject with a stable reason."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest

from sylm_data.pipeline.partitions import read_source_partition
from sylm_data.sample import layouts
from sylm_data.schemas import stream
from sylm_data.sources import READERS
from sylm_data.stages import ingest
from tests.conftest import emilia_members, wav_bytes, write_tar


def outcome_list(source: str, path, config: ingest.IngestConfig | None = None) -> list[tuple[str, str | None]]:
    """(id, reject reason or None when kept) for every record of every partition of `path`."""
    tables = [
        ingest.transform(batch, config or ingest.IngestConfig())
        for partition in READERS[source].partitions([str(path)])
        for batch in read_source_partition(partition, "ingest", batch_rows=4)
    ]
    rows = pa.concat_tables(tables).to_pylist()
    assert sum(row[stream.PARTITION_TOTAL] for row in rows) == len(rows)  # totals count every record
    return [(row["id"], row[stream.REJECT_REASON]) for row in rows]


def outcomes(source: str, path, config: ingest.IngestConfig | None = None) -> dict[str, str | None]:
    pairs = outcome_list(source, path, config)
    assert len({key for key, _ in pairs}) == len(pairs), "an id came out twice"
    return dict(pairs)


def test_each_damaged_emilia_sample_gets_its_reason(tmp_path, utterances):
    good, other = utterances[0], utterances[1]
    silent = wav_bytes(np.zeros(0, np.float32), 16_000)
    members = (
        emilia_members(good, "K_ok")
        + [("K_noaudio.json", json.dumps({"text": "hi", "language": "en"}).encode())]
        + [("K_nojson.mp3", good.audio)]
        + [("K_badjson.mp3", good.audio), ("K_badjson.json", b"{not json")]
        + emilia_members(good, "K_corrupt")[1:] + [("K_corrupt.mp3", b"\xff\xfb" + bytes(range(256)) * 8)]
        + [("K_empty.wav", silent)] + emilia_members(good, "K_empty")[1:]
        + emilia_members(good, "K_notext", text="  ")
        + emilia_members(good, "K_lang", language="xx")
        + emilia_members(good, "K_trunc", duration=good.duration_s)[1:] + [("K_trunc.mp3", good.audio[: len(good.audio) // 2])]
        # a sample rate that does not match the audio: 3 s of samples claimed to be 8 kHz lasts 9 s
        + [("K_rate.wav", wav_bytes(np.full(24_000 * 3, 0.1, np.float32), 8_000))] + emilia_members(good, "K_rate", duration=3.0)[1:]
        + emilia_members(other, "K_dup") + emilia_members(other, "K_dup")
    )
    path = write_tar(tmp_path / "EN-B000000.tar", members)
    got = sorted(outcome_list("emilia", path), key=str)
    assert got == sorted([
        ("emilia:K_ok", None),
        ("emilia:K_noaudio", "missing_audio"),
        ("emilia:K_nojson", "missing_metadata"),
        ("emilia:K_badjson", "bad_metadata"),
        ("emilia:K_corrupt", "decode_error"),
        ("emilia:K_empty", "empty_audio"),
        ("emilia:K_notext", "empty_text"),
        ("emilia:K_lang", "unknown_language"),
        ("emilia:K_trunc", "duration_mismatch"),
        ("emilia:K_rate", "duration_mismatch"),
        ("emilia:K_dup", None),
        ("emilia:K_dup", "duplicate_id"),
    ], key=str)


def test_a_duplicate_key_keeps_the_first_and_rejects_the_second(tmp_path, utterances):
    path = write_tar(tmp_path / "d.tar", emilia_members(utterances[0], "K") + emilia_members(utterances[1], "K"))
    partition = READERS["emilia"].partitions([str(path)])[0]
    rows = pa.concat_tables(list(read_source_partition(partition, "ingest", 8))).to_pylist()
    assert [row[stream.REJECT_REASON] for row in rows] == [None, "duplicate_id"]


def test_members_of_one_sample_need_not_be_adjacent(tmp_path, utterances):
    a, b = emilia_members(utterances[0], "A"), emilia_members(utterances[1], "B")
    path = write_tar(tmp_path / "scattered.tar", [a[0], b[0], a[1], b[1]])
    assert outcomes("emilia", path) == {"emilia:A": None, "emilia:B": None}


def test_a_truncated_tar_keeps_what_came_before_the_cut(tmp_path, utterances):
    members = [m for index, u in enumerate(utterances[:4]) for m in emilia_members(u, f"K{index}")]
    full = write_tar(tmp_path / "full.tar", members).read_bytes()
    cut_inside_third_audio = full.index(utterances[2].audio[:64]) + 100
    path = tmp_path / "EN-B000001.tar"
    path.write_bytes(full[:cut_inside_third_audio])
    got = outcomes("emilia", path)
    assert got == {"emilia:K0": None, "emilia:K1": None, "emilia:K2": "truncated_archive"}


def test_a_tar_cut_between_members_is_recorded(tmp_path, utterances):
    members = [m for index, u in enumerate(utterances[:2]) for m in emilia_members(u, f"K{index}")]
    full = write_tar(tmp_path / "full.tar", members).read_bytes()
    header_of_second_json = full.index(b"K1.json")
    path = tmp_path / "cut.tar"
    path.write_bytes(full[: header_of_second_json + 100])  # inside a member header
    got = outcomes("emilia", path)
    assert got["emilia:K0"] is None
    assert set(got.values()) - {None} <= {"truncated_archive", "missing_metadata"}
    assert "truncated_archive" in got.values()


@pytest.mark.parametrize("content", [b"", b"this is not a tar archive at all" * 40])
def test_an_unreadable_or_empty_input_is_one_reject(tmp_path, content):
    path = tmp_path / "EN-B000009.tar"
    path.write_bytes(content)
    got = outcomes("emilia", path)
    assert len(got) == 1
    assert list(got.values())[0] in {"unreadable_input", "empty_input"}


def test_a_truncated_yodas2_archive_rejects_the_lost_recordings(tmp_path, utterances):
    (archive,) = layouts.write_yodas2(tmp_path, utterances[:8], per_recording=4)
    data = gzip.decompress(archive.read_bytes())
    archive.write_bytes(gzip.compress(data[: len(data) * 3 // 4]))
    got = outcomes("yodas2", archive)
    assert len(got) == 8
    assert list(got.values()).count(None) == 4  # the first recording survives whole
    assert set(got.values()) == {None, "truncated_archive"}


def test_yodas2_segments_outside_the_recording_and_unknown_recordings(tmp_path, utterances):
    (archive,) = layouts.write_yodas2(tmp_path, utterances[:4], per_recording=4)
    text_file = tmp_path / "data/en000/text/00000000.json"
    entries = json.loads(text_file.read_text())
    entries[0]["text"]["Vid000-00x-00099-99999000-99999100"] = "beyond the end"
    entries.append({"audio_id": "gone", "text": {"gone-00000-00000000-00000100": "no audio"}})
    entries.append({"audio_id": "quiet", "text": {}})
    text_file.write_text(json.dumps(entries))
    got = outcomes("yodas2", archive)
    assert got["yodas2:Vid000-00x-00099-99999000-99999100"] == "segment_out_of_range"
    assert got["yodas2:gone-00000-00000000-00000100"] == "missing_audio"
    assert got["yodas2:quiet"] == "empty_text"
    assert list(got.values()).count(None) == 4


def test_manifest_lines_that_are_broken(tmp_path, utterances):
    (tmp_path / "a.mp3").write_bytes(utterances[0].audio)
    lines = [
        json.dumps({"id": "ok", "audio": "a.mp3", "text": "The river ran.", "language": "en-US"}),
        "{broken",
        json.dumps({"id": "nofile", "audio": "missing.mp3", "text": "x", "language": "en"}),
        json.dumps({"id": "noaudio", "text": "x", "language": "en"}),
        json.dumps({"id": "german", "audio": "a.mp3", "text": "Der Fluss.", "language": "de"}),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    got = outcomes("manifest", manifest, ingest.IngestConfig(languages=["en"]))
    assert got == {
        "manifest:ok": None,
        "manifest:m-L0000002": "bad_metadata",
        "manifest:nofile": "missing_audio",
        "manifest:noaudio": "missing_audio",
        "manifest:german": "language_filtered",
    }
