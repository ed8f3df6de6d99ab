"""Wrongly typed or out-of-range source values reject their own sample and nothing else.

`fields.checked` holds the rules; readers hand it values as found and never raise on one sample;
a whole ingest run over a sweep of bad inputs exits 0 and accounts for every sample once.
"""

import io
import json
import math
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import asdict, fields as dataclass_fields

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sylm_data.pipeline import partitions
from sylm_data.pipeline.partitions import record_id
from sylm_data.schemas.reject import Reason
from sylm_data.sources import READERS, Partition, Record, SourceError
from sylm_data.sources.fields import EMPTY_KEY, MAX_DURATION_MS, checked, milliseconds
from sylm_data.sources.tar import split_key
from tests.conftest import emilia_members, read_parquet, write_tar

GOOD = Record(key="K", audio=b"\xff\xfb", audio_name="K.mp3", text="hi", language="en", speaker="S1", quality=3.2,
              declared_duration_ms=1500, recording="R", recording_start_ms=1200, segment_index=3, meta={"wav": "K.mp3"})


def stored(record: Record) -> pa.Table:
    """The record as the pipeline stores it: its in-flight source_record row (raises if it cannot be)."""
    row = partitions.source_row(Partition("p", "test", "p.tar"), record, "ingest")
    return pa.Table.from_pylist([row], schema=partitions.SOURCE_SCHEMA)


def with_field(name: str, value) -> Record:
    return Record(**asdict(GOOD) | {name: value})


# --- checked: the rules --------------------------------------------------------------------------


def test_a_good_record_comes_back_equal():
    assert checked(GOOD) == GOOD


@pytest.mark.parametrize(("name", "value", "coerced"), [
    ("key", 17, "17"),
    ("speaker", 123, "123"),
    ("speaker", 1.5, "1.5"),
    ("quality", 4, 4.0),
    ("declared_duration_ms", 1500.4, 1500),
    ("declared_duration_ms", MAX_DURATION_MS, MAX_DURATION_MS),
    ("meta", None, {}),
    ("audio", bytearray(b"ab"), b"ab"),
    ("text", None, None),
    ("recording", 17, "17"),
    ("recording_start_ms", 0, 0),
    ("recording_start_ms", 1200.4, 1200),
    ("segment_index", 3.0, 3),
])
def test_values_of_a_near_type_are_coerced(name, value, coerced):
    record = checked(with_field(name, value))
    assert record.reject is None
    assert getattr(record, name) == coerced and type(getattr(record, name)) is type(coerced)
    stored(record)


@pytest.mark.parametrize(("name", "value", "detail"), [
    ("key", "", "key: empty"),
    ("key", "a\nb", "key: 'a\\nb' holds a control character"),
    ("key", "a\x00b", "key: 'a\\x00b' holds a control character"),
    ("key", "caf\udce9", "key: 'caf\\udce9' is not valid UTF-8"),
    ("key", [1], "key: a list is not a string"),
    ("key", True, "key: True is not a string"),
    ("text", 7, "text: 7 is not a string"),
    ("text", "\ud800", "text: '\\ud800' is not valid UTF-8"),
    ("language", 5, "language: 5 is not a string"),
    ("audio_name", 5, "audio_name: 5 is not a string"),
    ("speaker", True, "speaker: True is not a number"),
    ("speaker", math.nan, "speaker: nan is not a finite number"),
    ("speaker", {"name": "x"}, "speaker: a dict is not a number"),
    ("speaker", 10**70, "speaker: an int of over 60 digits is not a speaker name"),
    ("quality", math.nan, "quality: nan is not a finite number"),
    ("quality", -math.inf, "quality: -inf is not a finite number"),
    ("quality", 1e39, "quality: 1e+39 does not fit a float32"),
    ("quality", "3.2", "quality: '3.2' is not a number"),
    ("quality", False, "quality: False is not a number"),
    ("declared_duration_ms", milliseconds(math.nan), "duration: nan is not a finite number"),
    ("declared_duration_ms", milliseconds(math.inf), "duration: inf is not a finite number"),
    ("declared_duration_ms", milliseconds(1e20), "duration: 1e+23 ms is over 24 h"),
    ("declared_duration_ms", milliseconds(10**400), "duration: an int of over 60 digits ms is over 24 h"),
    ("declared_duration_ms", milliseconds(-1), "duration: -1000 ms is not at least 1 ms"),
    ("declared_duration_ms", milliseconds(0.0004), "duration: 0.4 ms is not at least 1 ms"),
    ("declared_duration_ms", milliseconds("abc"), "duration: 'abc' is not a number"),
    ("declared_duration_ms", milliseconds(True), "duration: True is not a number"),
    ("meta", {"wav": "K.mp3", "snr": math.nan}, "meta.snr: nan is not a finite number"),
    ("meta", {"stats": [1, math.inf]}, "meta.stats: a list holds a number that is not finite"),
    ("meta", {"who": "\udce9"}, "meta.who: '\\udce9' is not valid UTF-8"),
    ("meta", {"raw": b"x"}, "meta.raw: a bytes is not JSON"),
    ("meta", {1: "a", "b": 2}, "meta: the object is not JSON (TypeError"),
    ("meta", ["wav"], "meta: a list is not an object"),
    ("audio", "K.mp3", "audio: 'K.mp3' is not bytes"),
    ("recording", "", "recording: empty"),
    ("recording", "a\nb", "recording: 'a\\nb' holds a control character"),
    ("recording", ["R"], "recording: a list is not a string"),
    ("recording_start_ms", -1, "start_ms: -1 ms is not within 0 ms .. 24 h"),
    ("recording_start_ms", MAX_DURATION_MS + 1, f"start_ms: {MAX_DURATION_MS + 1} ms is not within 0 ms .. 24 h"),
    ("recording_start_ms", math.nan, "start_ms: nan is not a finite number"),
    ("recording_start_ms", "12", "start_ms: '12' is not a number"),
    ("segment_index", 1.5, "segment: 1.5 is not a segment number"),
    ("segment_index", -1, "segment: -1 is not a segment number"),
    ("segment_index", 2**63, "segment: 9223372036854775808 is not a segment number"),
    ("segment_index", True, "segment: True is not a number"),
])
def test_each_rule_rejects_the_value_and_names_it(name, value, detail):
    record = with_field(name, value)
    before = asdict(record)
    got = checked(record)
    assert got.reject == Reason.BAD_METADATA
    assert got.detail.startswith(detail), got.detail
    assert got.audio is None and got.text is None and got.meta == {}  # a reject carries no values
    stored(got)  # key and detail can be written, whatever the value was
    assert asdict(record) == before, "checked must not change its argument"


def test_a_place_without_a_recording_is_rejected():
    got = checked(with_field("recording", None))
    assert (got.reject, got.detail) == (Reason.BAD_METADATA, "start_ms: 1200 is given without a recording")
    no_start = Record(**asdict(GOOD) | {"recording": None, "recording_start_ms": None})
    assert checked(no_start).detail == "segment: 3 is given without a recording"


def test_a_deeply_nested_meta_is_rejected_not_raised():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    got = checked(with_field("meta", {"deep": deep}))
    assert got.reject == Reason.BAD_METADATA and got.detail.startswith("meta.deep: a list is not JSON (RecursionError")


def test_an_unusable_key_is_escaped_so_its_reject_can_be_written():
    assert checked(with_field("key", "a\nb")).key == "a\\nb"
    assert checked(with_field("key", "caf\udce9")).key == "caf\\udce9"
    assert checked(with_field("key", "")).key == EMPTY_KEY
    assert checked(with_field("key", [1])).key == "a list"


def test_an_already_rejected_record_keeps_its_reason_and_becomes_writable():
    truncated = Record(key="K", reject=Reason.TRUNCATED_ARCHIVE, detail="EOFError")
    assert checked(truncated) == truncated
    odd = Record(key="caf\udce9", text="kept?", reject=Reason.MISSING_AUDIO, detail="members: ['caf\udce9.json']")
    got = checked(odd)
    assert (got.key, got.reject, got.text) == ("caf\\udce9", Reason.MISSING_AUDIO, None)
    assert got.detail == "members: ['caf\\udce9.json']"
    stored(got)


_NASTY = [None, True, 0, -1, 7, 10**30, 10**400, 1.5, 1e20, 1e39, math.nan, math.inf, -math.inf, "", "abc", "3.2",
          "a\nb", "\x00", "\ud800", "caf\udce9", b"x", bytearray(b"y"), [], [math.nan], {}, {"x": math.nan},
          {"x": "\ud800"}, {1: 1, "a": 2}, {"ok": [1, "two", None]}]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.sampled_from(_NASTY[:21]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_VALUE = st.sampled_from(_NASTY) | _JSON


@settings(max_examples=250, deadline=None)
@given(st.fixed_dictionaries({field.name: _VALUE for field in dataclass_fields(Record)
                              if field.name not in ("reject", "detail")}))
def test_checked_never_raises_and_what_it_returns_can_be_stored(values):
    got = checked(Record(**values))
    stored(got)
    assert checked(got) == got
    assert (got.reject is None) == (got.detail is None)
    if got.reject is None:
        assert got.declared_duration_ms is None or 1 <= got.declared_duration_ms <= MAX_DURATION_MS
        assert got.recording_start_ms is None or 0 <= got.recording_start_ms <= MAX_DURATION_MS
        assert got.recording is not None or got.recording_start_ms is got.segment_index is None


# --- readers: one bad sample is that sample's reject, and reading goes on ------------------------


def tar_of(path, members: list[tuple[str, bytes]], **options) -> str:
    with tarfile.open(path, "w", **options) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


# emilia_members writes with json.dumps, which emits NaN and Infinity as JSON itself does not
BAD_FIELDS = {
    "B_lang": {"language": 5},
    "B_text": {"text": 7},
    "B_nan": {"duration": math.nan},
    "B_inf": {"duration": math.inf},
    "B_huge": {"duration": 1e20},
    "B_negative": {"duration": -1},
    "B_string": {"duration": "abc"},
    "B_meta": {"snr": -math.inf},
    "B_quality": {"dnsmos": math.nan},
}


def checked_records(source: str, path: str) -> list[Record]:
    return [checked(record) for partition in READERS[source].partitions([path]) for record in READERS[source].read(partition)]


def test_emilia_bad_values_reject_their_sample_and_reading_goes_on(tmp_path, utterances):
    members = emilia_members(utterances[0], "A")
    for index, (key, fields) in enumerate(BAD_FIELDS.items()):
        members += emilia_members(utterances[index % 4], key, **fields)
    members += emilia_members(utterances[1], "S_speaker", speaker=123) + emilia_members(utterances[2], "Z")
    records = checked_records("emilia", tar_of(tmp_path / "bad.tar", members))
    assert [record.key for record in records] == ["A", *BAD_FIELDS, "S_speaker", "Z"]
    by_key = {record.key: record for record in records}
    assert {key for key, record in by_key.items() if record.reject is None} == {"A", "S_speaker", "Z"}
    assert all(by_key[key].reject == Reason.BAD_METADATA for key in BAD_FIELDS)
    assert by_key["B_nan"].detail == "duration: nan is not a finite number"
    assert by_key["B_lang"].detail == "language: 5 is not a string"
    assert by_key["S_speaker"].speaker == "123"


def test_member_names_that_climb_or_are_absolute_are_relative_keys(tmp_path, utterances):
    audio, document = utterances[0].audio, json.dumps({"text": "hi", "language": "en"}).encode()
    members = [("../up.mp3", audio), ("../up.json", document), ("/etc/abs.mp3", audio), ("/etc/abs.json", document),
               ("a/../../b/deep.mp3", audio), ("a/../../b/deep.json", document), ("./dot.mp3", audio), ("./dot.json", document)]
    records = checked_records("emilia", tar_of(tmp_path / "paths.tar", members))
    assert [(record.key, record.reject) for record in records] == [
        ("up", None), ("etc/abs", None), ("b/deep", None), ("dot", None)]
    assert split_key("/a/../../x.y.json") == ("x", "y.json")


@pytest.mark.parametrize("format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_300_character_key_reads_like_any_other(tmp_path, utterances, format):
    key = "L" * 300
    records = checked_records("emilia", tar_of(tmp_path / "long.tar", emilia_members(utterances[0], key), format=format))
    assert [(record.key, record.reject) for record in records] == [(key, None)]


def test_a_member_name_that_is_not_utf8_is_a_reject_under_an_escaped_key(tmp_path, utterances):
    members = emilia_members(utterances[0], "café") + emilia_members(utterances[1], "Z")
    path = tar_of(tmp_path / "latin1.tar", members, format=tarfile.GNU_FORMAT, encoding="latin-1")
    records = checked_records("emilia", path)
    assert [(record.key, record.reject) for record in records] == [("caf\\udce9", Reason.BAD_METADATA), ("Z", None)]
    stored(records[0])


def test_damage_mid_archive_rejects_what_could_not_be_read(tmp_path, utterances):
    members = [m for index, u in enumerate(utterances[:3]) for m in emilia_members(u, f"K{index}")]
    data = bytearray(write_tar(tmp_path / "whole.tar", members).read_bytes())
    header = data.index(b"K1.json")  # a short name sits at the start of its 512-byte header
    data[header : header + 512] = b"\xa5" * 512
    (tmp_path / "damaged.tar").write_bytes(bytes(data))
    records = checked_records("emilia", str(tmp_path / "damaged.tar"))
    assert [(record.key, record.reject) for record in records] == [
        ("K0", None), ("K1", Reason.MISSING_METADATA), (records[-1].key, Reason.TRUNCATED_ARCHIVE)]
    assert records[-1].key.endswith("#truncated") and "not read as members" in records[-1].detail


def test_a_second_archive_appended_is_not_dropped_silently(tmp_path, utterances):
    first = write_tar(tmp_path / "1.tar", emilia_members(utterances[0], "K0")).read_bytes()
    second = write_tar(tmp_path / "2.tar", emilia_members(utterances[1], "K1")).read_bytes()
    (tmp_path / "cat.tar").write_bytes(first + second)
    records = checked_records("emilia", str(tmp_path / "cat.tar"))
    assert [record.reject for record in records] == [None, Reason.TRUNCATED_ARCHIVE]


def test_manifest_bad_values_reject_their_line(tmp_path, utterances):
    (tmp_path / "a.mp3").write_bytes(utterances[0].audio)
    lines = [{"id": "ok", "audio": "a.mp3", "text": "hi", "language": "en", "duration": 1.2},
             {"id": 42, "audio": "a.mp3", "text": "hi", "language": "en", "speaker": 7},
             {"id": "nan", "audio": "a.mp3", "text": "hi", "language": "en", "duration": math.nan},
             {"id": "quality", "audio": "a.mp3", "text": "hi", "language": "en", "quality": "good"},
             {"id": "path", "audio": ["a.mp3"], "text": "hi"},
             {"id": "nul", "audio": "a\x00.mp3", "text": "hi"},
             {"id": ["list"], "audio": "a.mp3", "text": "hi"},
             {"audio": "a.mp3", "text": "hi", "language": "en"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n" + "[" * 100_000 + "\n")
    got = [(record.key, record.reject) for record in checked_records("manifest", str(manifest))]
    assert got == [("ok", None), ("42", None), ("nan", Reason.BAD_METADATA), ("quality", Reason.BAD_METADATA),
                   ("path", Reason.BAD_METADATA), ("nul", Reason.MISSING_AUDIO), ("a list", Reason.BAD_METADATA),
                   ("m-L0000008", None), ("m-L0000009", Reason.BAD_METADATA)]


def test_manifest_recording_fields_are_checked_like_the_others(tmp_path, utterances):
    (tmp_path / "a.mp3").write_bytes(utterances[0].audio)
    base = {"audio": "a.mp3", "text": "hi", "language": "en"}
    lines = [{"id": "start", "recording": "r", "start_ms": 1500.6}, {"id": "segment", "recording": 7, "segment": 2},
             {"id": "none"}, {"id": "nan", "recording": "r", "start_ms": math.nan},
             {"id": "list", "recording": ["r"], "start_ms": 0}, {"id": "fraction", "recording": "r", "segment": 0.5},
             {"id": "alone", "start_ms": 10}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(base | line) + "\n" for line in lines))
    records = checked_records("manifest", str(manifest))
    assert [(r.key, r.recording, r.recording_start_ms, r.segment_index) for r in records[:3]] == [
        ("start", "r", 1501, None), ("segment", "7", None, 2), ("none", None, None, None)]
    assert [(r.key, r.reject, r.detail) for r in records[3:]] == [
        ("nan", Reason.BAD_METADATA, "start_ms: nan is not a finite number"),
        ("list", Reason.BAD_METADATA, "recording: a list is not a string"),
        ("fraction", Reason.BAD_METADATA, "segment: 0.5 is not a segment number (a whole number, 0 or more)"),
        ("alone", Reason.BAD_METADATA, "start_ms: 10 is given without a recording")]
    assert all("recording" not in r.meta for r in records[:3])


def test_yodas2_transcripts_that_are_not_strings_reject_their_utterance(tmp_path, utterances):
    from sylm_data.sample import layouts

    (archive,) = layouts.write_yodas2(tmp_path, utterances[:4], per_recording=4)
    text_file = tmp_path / "data/en000/text/00000000.json"
    entries = json.loads(text_file.read_text())
    first = next(iter(entries[0]["text"]))
    entries[0]["text"][first] = 7
    text_file.write_text(json.dumps(entries))
    records = checked_records("yodas2", str(archive))
    assert [record.reject for record in records] == [Reason.BAD_METADATA, None, None, None]
    assert records[0].key == first and records[0].detail == "text: 7 is not a string"

    text_file.write_text(json.dumps([{"audio_id": "Vid000-00x", "text": ["not", "an", "object"]}]))
    with pytest.raises(SourceError, match="entry 0 .* text is not an object"):
        checked_records("yodas2", str(archive))


def test_text_corpus_values_are_checked_too(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps(row) for row in [
        {"id": 5, "text": "the river ran", "language": "en"},
        {"id": "b", "text": 7},
        {"id": "c", "text": "x", "language": ["en"]},
    ]) + "\n")
    got = [(record.key, record.reject, record.detail) for record in checked_records("text", str(corpus))]
    assert got == [("5", None, None), ("b", Reason.BAD_METADATA, "text: 7 is not a string"),
                   ("c", Reason.BAD_METADATA, "language: a list is not a string")]


# --- a whole ingest run over a sweep of bad inputs ------------------------------------------------


@pytest.mark.slow
def test_an_ingest_run_over_bad_inputs_exits_0_and_accounts_for_every_sample_once(tmp_path, utterances):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    values = emilia_members(utterances[0], "V_before")
    for index, (key, fields) in enumerate(BAD_FIELDS.items()):
        values += emilia_members(utterances[index % 4], key, **fields)
    values += emilia_members(utterances[1], "V_speaker", speaker=123) + emilia_members(utterances[2], "V_after")
    tar_of(corpus / "EN-B000000.tar", values)
    names = emilia_members(utterances[3], "N_before") + emilia_members(utterances[4], "L" * 300)
    names += [("../" + name, data) for name, data in emilia_members(utterances[5], "N_up")]
    names += [("/etc/" + name, data) for name, data in emilia_members(utterances[6], "N_abs")]
    names += emilia_members(utterances[7], "N_after")
    tar_of(corpus / "EN-B000001.tar", names, format=tarfile.GNU_FORMAT)
    tar_of(corpus / "EN-B000002.tar", emilia_members(utterances[8], "café") + emilia_members(utterances[9], "E_after"),
           format=tarfile.GNU_FORMAT, encoding="latin-1")
    (corpus / "x.tar").write_bytes(b"this is not a tar archive" * 40)
    (corpus / "empty.tar").write_bytes(b"")
    tar_of(corpus / "no-members.tar", [])

    run = subprocess.run([sys.executable, "-m", "sylm_data.cli", "run", "--stage", "ingest", "--source", "emilia",
                          "--input", str(corpus / "*.tar"), "--output", str(out), "--set", "run.num_cpus=2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    accepted, rejects = read_parquet(out / "ingest"), read_parquet(out / "rejects" / "ingest")
    reasons = dict(zip(rejects["id"].to_pylist(), rejects["reason"].to_pylist()))
    keys = ["V_before", *BAD_FIELDS, "V_speaker", "V_after", "N_before", "L" * 300, "N_up", "etc/N_abs", "N_after",
            "caf\\udce9", "E_after"]
    expected = Counter(record_id("emilia", key) for key in keys)
    whole_inputs = [id_ for id_, reason in reasons.items() if reason in ("unreadable_input", "empty_input")]
    got = Counter(accepted["id"].to_pylist() + [id_ for id_ in rejects["id"].to_pylist() if id_ not in whole_inputs])
    assert got == expected, "every sample once, in the output or in the rejects"
    assert len(whole_inputs) == 3  # x.tar, empty.tar and no-members.tar, one reject each

    good = ["V_before", "V_speaker", "V_after", "N_before", "L" * 300, "N_up", "etc/N_abs", "N_after", "E_after"]
    assert set(accepted["id"].to_pylist()) == {record_id("emilia", key) for key in good}
    assert all(reasons[record_id("emilia", key)] == "bad_metadata" for key in [*BAD_FIELDS, "caf\\udce9"])
    speaker = accepted.filter(pc.equal(accepted["id"], record_id("emilia", "V_speaker")))["speaker"]
    assert speaker.to_pylist() == ["123"]
