"""The shard writer on ingest output: webdataset reads every sample back exactly once."""

import io
import json
import re
import tarfile
from unittest import mock

import pyarrow as pa
import pytest
import webdataset as wds
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sylm_data.pipeline.partitions import read_source_partition
from sylm_data.pipeline import shards
from sylm_data.pipeline.shards import ShardWriter, member_header
from sylm_data.sample import layouts
from sylm_data.schemas import sample, stream, utterance
from sylm_data.sources import READERS
from sylm_data.stages import ingest


@pytest.fixture(scope="module")
def utterance_rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emilia")
    layouts.write_emilia(folder, layouts.sample_utterances(), shard_size=12)
    rows = []
    for partition in READERS["emilia"].partitions([str(folder / "*.tar")]):
        for batch in read_source_partition(partition, "ingest", 16):
            rows += [row for row in ingest.transform(batch, ingest.IngestConfig()).to_pylist() if not row[stream.REJECT_REASON]]
    return rows


def write_shards(folder, rows, target_bytes):
    def audio_ms(first, end):
        return {"audio_ms": sum(row[utterance.DURATION_MS] for row in rows[first:end])}

    with ShardWriter(folder, target_bytes=target_bytes, extra_index={"config_hash": "abc"}, shard_stats=audio_ms) as writer:
        for row in rows:
            fields = {k: row[k] for k in (utterance.ID, utterance.TEXT, utterance.LANGUAGE, utterance.DURATION_MS)}
            writer.write(row[utterance.ID], {"json": json.dumps(fields).encode(), row[utterance.AUDIO_FORMAT]: row[utterance.AUDIO]})
    return json.loads((folder / "index.json").read_text())


def test_shards_round_trip_through_webdataset(tmp_path, utterance_rows):
    index = write_shards(tmp_path, utterance_rows, target_bytes=150_000)
    shards = sorted(tmp_path.glob("shard-*.tar"))
    assert [s.name for s in shards] == [f"shard-{i:06d}.tar" for i in range(len(shards))] and len(shards) > 2
    assert index["total_samples"] == len(utterance_rows) == sum(s["samples"] for s in index["shards"])
    assert index["stats"]["audio_ms"] == sum(row["duration_ms"] for row in utterance_rows)
    assert index["config_hash"] == "abc"
    assert all(s["bytes"] <= 150_000 + 20_000 for s in index["shards"])  # one sample may overshoot the target
    read = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
    assert sorted(item["__key__"] for item in read) == sorted(row["id"] for row in utterance_rows)
    by_id = {row["id"]: row for row in utterance_rows}
    for item in read:
        assert item["mp3"] == by_id[item["__key__"]]["audio"]
        assert json.loads(item["json"])["text"] == by_id[item["__key__"]]["text"]
    assert not list(tmp_path.glob(".*"))  # no partial files left behind


def test_shards_are_byte_identical_for_the_same_samples(tmp_path, utterance_rows):
    write_shards(tmp_path / "a", utterance_rows, 100_000)
    write_shards(tmp_path / "b", utterance_rows, 100_000)
    for shard in sorted((tmp_path / "a").iterdir()):
        assert shard.read_bytes() == (tmp_path / "b" / shard.name).read_bytes(), shard.name


def _tarfile_member(name: str, size: int) -> tarfile.TarInfo:  # as ShardWriter's docstring promises
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


@settings(deadline=None, max_examples=300)
@given(st.text(st.characters(blacklist_categories=["Cs"]) | st.sampled_from("/\udc80"), max_size=120),
       st.sampled_from(["json", "mp3", "é"]),
       st.sampled_from([0, 1, 511, 512, 513, 8**11 - 1, 8**11]) | st.integers(0, 2**40))
def test_a_member_header_is_the_one_tarfile_writes(key, extension, size):
    """Names of up to 100 bytes are filled into a template; longer ones (split at a slash, or
    refused) and sizes past USTAR's 11 octal digits go through tarfile."""
    try:
        expected = _tarfile_member(f"{key}.{extension}", size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):
            member_header(key, extension, size)
    else:
        assert member_header(key, extension, size) == expected


@settings(deadline=None, max_examples=50)
@given(st.lists(st.tuples(st.binary(max_size=1500), st.binary(max_size=600)), min_size=1, max_size=30),
       st.integers(600, 20_000))
def test_shards_are_the_tar_files_tarfile_writes(tmp_path_factory, samples, target_bytes):
    folder = tmp_path_factory.mktemp("shards")
    with ShardWriter(folder, target_bytes) as writer:
        for number, (document, audio) in enumerate(samples):
            writer.write(f"k{number}", {"json": document, "mp3": audio})
    index, first = json.loads((folder / "index.json").read_text()), 0
    for shard in index["shards"]:
        expected = io.BytesIO()
        with tarfile.open(fileobj=expected, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for number in range(first, first + shard["samples"]):
                for extension, data in (("json", samples[number][0]), ("mp3", samples[number][1])):
                    archive.addfile(_tarfile_member(f"k{number}.{extension}", len(data)), io.BytesIO(data))
        first += shard["samples"]
        assert (folder / shard["name"]).read_bytes() == expected.getvalue(), shard["name"]
    assert first == len(samples)


def _shard_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.tar"))} | {"index": (folder / "index.json").read_text()}


@settings(deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.text("ab_:é", min_size=1, max_size=4), st.binary(max_size=1500), st.text(max_size=300)),
                min_size=1, max_size=25, unique_by=lambda sample: sample[0]),
       st.integers(0, 5), st.integers(600, 20_000), st.sampled_from([None, 1, 3]), st.booleans(), st.sampled_from([None, 2000]))
@example([("a", b"", ""), ("b", b"", ""), ("c", b"", "")], 0, 4096, None, False, None)  # two samples fill a shard exactly
def test_samples_written_many_at_once_make_the_shards_written_one_at_a_time(tmp_path_factory, samples, before, target_bytes,
                                                                            max_samples, long_names, packed_bytes):
    """From an open shard or none, over shard ends by bytes and by samples, two extensions, a
    shard packed in several parts; names past 100 bytes go through tarfile's headers."""
    if long_names:
        samples = [("x" * 90 + "/" + key, *payloads) for key, *payloads in samples]  # split at the slash
    stats = lambda first, end: {"samples": end - first}  # noqa: E731
    one, many = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("many")
    with ShardWriter(one, target_bytes, max_samples=max_samples, shard_stats=stats) as writer:
        for key, document, text in samples:
            writer.write(key, {"json": document, "txt": text.encode()})
    with (ShardWriter(many, target_bytes, max_samples=max_samples, shard_stats=stats) as writer,
          mock.patch.object(shards, "_PACKED_BYTES", packed_bytes or shards._PACKED_BYTES)):
        for key, document, text in samples[:before]:
            writer.write(key, {"json": document, "txt": text.encode()})
        rest = samples[before:]

        def pieces(values, kind, cut):  # the arrays in chunks cut at different places
            return pa.chunked_array([pa.array(values[:cut], kind), pa.array(values[cut:], kind)])

        writer.write_many(pieces([key for key, *_ in rest], pa.string(), len(rest) // 2),
                          {"txt": pa.array([text for *_, text in rest], pa.string()),
                           "json": pieces([document for _, document, _ in rest], pa.binary(), len(rest) // 3)})
    assert _shard_bytes(many) == _shard_bytes(one)


def test_samples_written_many_at_once_are_checked_as_one_at_a_time(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write("a", {"json": b"{}"})
        for keys, match in ((["b", "a"], "twice"), (["b", "b"], "twice"), (["b", "c.d"], "no dot"), (["", "b"], "no dot")):
            with pytest.raises(ValueError, match=match):
                writer.write_many(pa.array(keys), {"json": pa.array([b"{}"] * len(keys))})
        with pytest.raises(ValueError, match="not null"):
            writer.write_many(pa.array(["b"]), {"json": pa.array([None], pa.binary())})
        writer.write_many(pa.array(["b"]), {"json": pa.array([b"{}"])})


def test_bad_keys_are_refused(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write("a", {"json": b"{}"})
        with pytest.raises(ValueError, match="no dot"):
            writer.write("a.b", {"json": b"{}"})
        with pytest.raises(ValueError, match="twice"):
            writer.write("a", {"json": b"{}"})


def test_a_failed_writer_publishes_no_half_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, target_bytes=10) as writer:
            writer.write("a", {"json": b"{}"})
            writer.write("b", {"json": b"{}"})  # closes shard 0, opens shard 1
            raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar"]  # no index, no partial shard


def test_the_sample_contract_validates_and_renders():
    good = {"segments": [{"modality": "text", "text": "The river"}, {"modality": "speech", "units": [1, 2, 3]},
                         {"modality": "text", "text": "past the old mill"}],
            "kind": "interleaved", "language": "en", "source_id": "emilia:K"}
    sample.validate(good)
    assert sample.render(good) == "[interleaved] The river <speech 3 units> past the old mill"
    uniform = {**good, "segments": [sample.text_segment("The river"), sample.speech_segment([1, 2, 3])], "synthetic": None}
    sample.validate(uniform)  # version 2: every key, null where absent; version 1 (above) still reads
    for broken in ({**good, "kind": "x"}, {**good, "segments": []},
                   {**good, "segments": [{"modality": "speech", "units": ["a"]}]},
                   {**good, "segments": [{"modality": "text", "text": "a", "units": [1]}]},
                   {**good, "segments": [{"modality": "speech", "text": "a", "units": [1]}]},
                   {**good, "segments": ["text"]}, {**uniform, "synthetic": 3}):
        with pytest.raises(ValueError):
            sample.validate(broken)


def test_a_stat_some_shards_lack_is_summed_over_those_that_have_it(tmp_path):
    kinds = ["text", "speech"]
    with ShardWriter(tmp_path, target_bytes=10, shard_stats=lambda first, end: {f"{kinds[first]}_samples": end - first}) as writer:
        writer.write("a", {"json": b"{}"})
        writer.write("b", {"json": b"{}"})  # over the target: a shard of its own
    index = json.loads((tmp_path / "index.json").read_text())
    assert [shard["stats"] for shard in index["shards"]] == [{"text_samples": 1}, {"speech_samples": 1}]
    assert index["stats"] == {"text_samples": 1, "speech_samples": 1}
