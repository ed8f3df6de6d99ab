"""Documents of whole recordings (`interleave.context = "recording"`): where a document starts,
that it holds every word of its utterances once and in order, that the shards do not depend on
the partitioning, and the whole flow on espeak recordings with a missing segment, a long gap, two
speakers and a recording split over two inputs."""

import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from sylm_data.documents import recordings
from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import runner
from sylm_data.pipeline.shards import manifest_path
from sylm_data.pipeline import output
from sylm_data.pipeline.output import read_rows
from sylm_data.sample import MANIFEST
from sylm_data.schemas import sample, stream
from sylm_data.stages import interleave
from tests.conftest import commit_rows, serial, shard_samples
from tests.test_interleave import UNITS, WORDS, row, tokenized_rows

RECORDING = interleave.InterleaveConfig(context="recording", shard_bytes=6000)


PLACE = pa.schema([sample.ROW_SCHEMA.field(name) for name in (
    sample.ROW_RECORDING, sample.ROW_RECORDING_START_MS, sample.ROW_DURATION_MS, sample.ROW_SEGMENT_INDEX,
    sample.ROW_SPEAKER, sample.ROW_LANGUAGE)])


def place(recording="r", start_ms=None, duration_ms=1000, segment_index=None, speaker=None, language="en") -> dict:
    return dict(zip(PLACE.names, (recording, start_ms, duration_ms, segment_index, speaker, language)))


def starts(places: list[dict], max_document_ms: int, max_gap_ms: int, same_speaker: bool) -> list[bool]:
    return recordings.document_starts(pa.Table.from_pylist(places, schema=PLACE), max_document_ms, max_gap_ms,
                                      same_speaker).tolist()


def test_a_document_starts_at_a_new_recording_a_missing_segment_a_gap_a_speaker_and_the_length_bound():
    assert starts([place(segment_index=i) for i in (0, 1, 2, 4, 5)], 60_000, 3_000, False) == [True, False, False, True, False]
    assert starts([place(start_ms=s) for s in (0, 1_500, 2_600, 9_000)], 60_000, 3_000, False) == [True, False, False, True]
    assert starts([place("a", segment_index=0), place("b", segment_index=1), place(None), place(None)], 60_000, 3_000, False) \
        == [True, True, True, True]
    speakers = [place(segment_index=i, speaker=s) for i, s in enumerate("aab")]
    assert starts(speakers, 60_000, 3_000, False) == [True, False, False]
    assert starts(speakers, 60_000, 3_000, True) == [True, False, True]
    assert starts([place(segment_index=i, duration_ms=400) for i in range(5)], 1_000, 3_000, False) \
        == [True, False, True, False, True]
    assert starts([place(segment_index=0), place(segment_index=1, language="de")], 60_000, 3_000, False) == [True, True]


def starts_one_by_one(places: list[dict], max_document_ms: int, max_gap_ms: int, same_speaker: bool) -> list[bool]:
    """The rules of `document_starts`, member by member."""
    opened, audio_ms = [], 0
    for index, now in enumerate(places):
        before = places[index - 1] if index else None
        known = lambda name: now[name] is not None and before[name] is not None  # noqa: E731
        opens = (before is None or now["recording"] is None or now["recording"] != before["recording"]
                 or now["language"] != before["language"]
                 or (known("segment_index") and now["segment_index"] != before["segment_index"] + 1)
                 or (known("recording_start_ms")
                     and now["recording_start_ms"] - before["recording_start_ms"] - before["duration_ms"] > max_gap_ms)
                 or (same_speaker and now["speaker"] != before["speaker"])
                 or audio_ms + now["duration_ms"] > max_document_ms)
        audio_ms = now["duration_ms"] if opens else audio_ms + now["duration_ms"]
        opened.append(opens)
    return opened


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(place, st.sampled_from(["r", "s", None]), st.one_of(st.none(), st.integers(0, 20_000)),
                          st.integers(100, 5_000), st.one_of(st.none(), st.integers(0, 4)),
                          st.sampled_from(["a", "b", None]), st.sampled_from(["en", "de"])), max_size=30),
       st.integers(1_000, 12_000), st.integers(0, 4_000), st.booleans())
def test_document_starts_over_whole_columns_follow_the_rules_member_by_member(places, max_document_ms, max_gap_ms,
                                                                           same_speaker):
    assert starts(places, max_document_ms, max_gap_ms, same_speaker) == \
        starts_one_by_one(places, max_document_ms, max_gap_ms, same_speaker)


@st.composite
def member_lists(draw):
    """Members in order (chunks of one to four words, units as many), with document starts."""
    members, word, unit = [], 0, 0
    for _ in range(draw(st.integers(1, 12))):
        chunks = []
        for _ in range(draw(st.integers(1, 5))):
            words = draw(st.integers(1, 4))
            units = draw(st.integers(1, 3))
            chunks.append([" ".join(f"w{word + i}" for i in range(words)), words,
                           ",".join(str(unit + i) for i in range(units))])
            word, unit = word + words, unit + units
        members.append(chunks)
    starts = [True] + draw(st.lists(st.booleans(), min_size=len(members) - 1, max_size=len(members) - 1))
    return members, starts


MEMBER = pa.schema([sample.ROW_SCHEMA.field(name) for name in (sample.ROW_JSON, *sample.ROW_MEMBER_COLUMNS)])


def member(chunks: list) -> dict:
    """A member row's columns (`recordings.member_rows`) of chunks `[text, words, "u,u"]`, words spaced."""
    words = " ".join(chunk[0] for chunk in chunks).split(" ")
    text = " ".join(words)
    offsets = np.cumsum([0] + [len(word) + 1 for word in words]).tolist()
    offsets[-1] = len(text)
    units = [[int(unit) for unit in chunk[2].split(",")] for chunk in chunks]
    return dict(zip(MEMBER.names, (text, [chunk[1] for chunk in chunks], [len(found) for found in units], offsets,
                                   [unit for found in units for unit in found])))


@settings(max_examples=150, deadline=None)
@given(member_lists(), st.sampled_from(["word", "sentence"]), st.integers(0, 5))
def test_every_word_of_a_document_comes_once_in_order_as_text_or_speech(drawn, granularity, seed):
    members, starts = drawn
    ids = [f"u{index:03d}" for index in range(len(members))]
    config = interleave.InterleaveConfig(context="recording", granularity=granularity, span_mean=2, seed=seed)
    made = recordings.render_documents(pa.array(ids), pa.array(["en"] * len(ids)), pa.Table.from_pylist([member(chunks) for chunks in members], schema=MEMBER),
                                       np.array(starts),
                                       seed, lambda *arguments: interleave.choose_document_speech(*arguments, config=config))
    firsts = made["first"].tolist()
    assert firsts == [i for i, opens in enumerate(starts) if opens]
    held = []
    for number, first in enumerate(firsts):
        document = {name: made[name][number] for name in ("kind", "words", "speech_words", "units")}
        parsed = json.loads(made["json"][number].as_py())
        sample.validate(parsed)
        held += parsed["source_ids"]
        end = firsts[number + 1] if number + 1 < len(firsts) else len(members)
        chunks = [chunk for member in members[first:end] for chunk in member]
        # walk the chunks: each segment is a run of whole chunks, text as written, units in order
        at, spoken_words, units = 0, 0, 0
        for segment in parsed["segments"]:
            assert at < len(chunks)
            if segment["modality"] == "speech":
                assert segment["units"], "a speech segment without units"
                taken = []
                while at < len(chunks) and len(taken) < len(segment["units"]):
                    taken += [int(unit) for unit in chunks[at][2].split(",")]
                    spoken_words += chunks[at][1]
                    at += 1
                assert taken == segment["units"]
                units += len(taken)
            else:
                taken = []
                while at < len(chunks) and " ".join(taken) != segment["text"]:
                    taken.append(chunks[at][0])
                    at += 1
                assert " ".join(taken) == segment["text"]
        assert at == len(chunks)  # every chunk once
        modalities = [segment["modality"] for segment in parsed["segments"]]
        assert all(a != b for a, b in zip(modalities, modalities[1:]))  # runs of one modality are one segment
        assert document["words"] == sum(chunk[1] for chunk in chunks)
        assert (document["speech_words"], document["units"]) == (spoken_words, units)
        assert parsed["kind"] == document["kind"] and (parsed["kind"] == "interleaved") == (len(set(modalities)) == 2)
    assert held == ids


def member_table(rows: list[dict]):
    return stream.accepted(interleave.transform(tokenized_rows(rows), RECORDING), sample.ROW_SCHEMA)


def recording_rows(count: int) -> list[dict]:
    """Utterances of a few recordings (segment indices, with one missing), and two of none."""
    rows = []
    for number in range(count):
        recording = f"manifest:talk-{number % 4}" if number < count - 2 else None
        rows.append(row(WORDS, UNITS, id=f"manifest:u{number:03d}") | {
            "recording": recording, "segment_index": number // 4 + (number // 4 >= 5) if recording else None,
            "recording_start_ms": None, "duration_ms": 1200, "speaker": "s"})
    return rows


def test_document_shards_are_the_same_bytes_however_the_members_were_partitioned(tmp_path):
    rows = recording_rows(42)
    one, three = tmp_path / "one" / "interleave", tmp_path / "three" / "interleave"
    commit_rows(one, "p0", member_table(rows))
    for part in range(3):
        commit_rows(three, f"p{part}", member_table(rows[part::3]))
    small = interleave.InterleaveConfig(context="recording", shard_bytes=6000, members_per_bucket=16)
    summaries = [interleave.write_shards(small, folder, serial) for folder in (one, three)]
    assert summaries[0] == summaries[1]
    tars = sorted((tmp_path / "one" / "shards").glob("*.tar"))
    assert len(tars) > 1
    assert [path.name for path in tars] == [path.name for path in sorted((tmp_path / "three" / "shards").glob("*.tar"))]
    for path in tars:
        assert path.read_bytes() == (tmp_path / "three" / "shards" / path.name).read_bytes()
    samples = shard_samples(tmp_path / "one" / "shards")
    held = [source for _, document in samples for source in document["source_ids"]]
    assert sorted(held) == sorted(r["id"] for r in rows)  # every member in exactly one document
    # talk-0 .. talk-3 hold segments 0-4 then 6-10: two documents each, plus the two without a recording
    documents = dict(samples)
    assert len(samples) == len(documents) == 4 * 2 + 2
    rows_of_documents = read_rows(tmp_path / "one" / recordings.DOCUMENTS)  # their rows, without the JSON the shards hold
    assert rows_of_documents.schema.names == sample.DOCUMENT_SCHEMA.names and sorted(rows_of_documents[sample.ROW_KEY].to_pylist()) \
        == sorted(documents)
    assert {row[sample.ROW_KEY]: row[sample.ROW_KIND] for row in rows_of_documents.to_pylist()} \
        == {key: document["kind"] for key, document in documents.items()}
    assert not (tmp_path / "one" / recordings.DOCUMENTS / recordings.SHUFFLE).exists()

    again = interleave.write_shards(small, one, serial)  # nothing changed: the documents are kept
    assert again == summaries[0]


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getnames()


def test_bucket_tasks_write_the_shards_and_a_bucket_without_them_is_assembled_again(tmp_path, monkeypatch):
    """Each bucket task writes its documents' shards (publishing then writes none) and commits
    their rows without the JSON. A bucket whose shards' manifest is gone is assembled again, to the
    same bytes, also after a kill half way through that. With `min_shards`, whose cap needs every
    bucket's document count, the buckets are counted first: the shards hold the same samples, capped."""
    rows = recording_rows(42)
    small = interleave.InterleaveConfig(context="recording", shard_bytes=6000, members_per_bucket=16)
    folder, shards = tmp_path / "interleave", tmp_path / "shards"
    for part in range(3):
        commit_rows(folder, f"p{part}", member_table(rows[part::3]))
    calls = []

    def counted(function, items):
        calls.append(len(items))
        return serial(function, items)

    def written() -> dict[str, bytes]:
        return {path.relative_to(shards).as_posix(): path.read_bytes() for path in sorted(shards.rglob("*")) if path.is_file()}

    interleave.write_shards(small, folder, counted)
    assert calls == [3, 3, 0]  # partitions shuffled, buckets assembled, nothing left to publish
    by_buckets = written()
    assert not any(name.endswith(".partial") for name in by_buckets)
    manifest_path(shards, recordings.bucket_name(1, 3)).unlink()
    with monkeypatch.context() as patched:  # killed after the bucket's shards, before its rows
        patched.setattr(recordings, "write_parquet", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            interleave.write_shards(small, folder, counted)
    calls.clear()
    interleave.write_shards(small, folder, counted)
    assert calls == [3, 1, 0] and written() == by_buckets  # that bucket alone assembled again
    assert read_rows(tmp_path / recordings.DOCUMENTS).num_rows == 10
    shutil.rmtree(shards)
    calls.clear()
    interleave.write_shards(small, folder, counted)
    assert calls == [3, 3, 0] and written() == by_buckets
    calls.clear()
    interleave.write_shards(small, folder, counted)
    assert calls == [0]  # all kept: nothing shuffled, assembled or published again

    capped = dataclasses.replace(small, min_shards=4)  # 10 documents: at most 2 a shard
    calls.clear()
    interleave.write_shards(capped, folder, counted)
    assert calls == [3, 3, 3, 0]  # shuffled, counted, assembled
    capped_samples = [tar_names(path.read_bytes()) for path in sorted(shards.glob("*.tar"))]
    assert len(capped_samples) >= 4 and max(map(len, capped_samples)) <= 2
    assert sorted(sum(capped_samples, [])) == sorted(sum((tar_names(data) for name, data in by_buckets.items() if name.endswith(".tar")), []))
    calls.clear()
    interleave.write_shards(capped, folder, counted)
    assert calls == [0]  # counted from the markers


def test_a_finalize_killed_half_way_resumes_to_the_same_shards(tmp_path):
    """Killed after the shuffle and one bucket's documents (and its shards): the rerun keeps what
    was finished, redoes the rest (a bucket folder left without its marker included) and ends as a
    clean run."""
    rows = recording_rows(42)
    small = interleave.InterleaveConfig(context="recording", shard_bytes=6000, members_per_bucket=16)
    clean, killed = tmp_path / "clean" / "interleave", tmp_path / "killed" / "interleave"
    for folder in (clean, killed):
        for part in range(3):
            commit_rows(folder, f"p{part}", member_table(rows[part::3]))
    interleave.write_shards(small, clean, serial)

    calls = []

    def dies_after_one_bucket(function, items):
        calls.append(len(items))
        if len(calls) == 2:  # the shuffle ran; one bucket is assembled, the next one's rows are half written
            function(items[0])
            (killed.parent / recordings.DOCUMENTS / recordings.bucket_name(items[1], len(items))).mkdir(parents=True)
            raise KeyboardInterrupt
        return serial(function, items)

    with pytest.raises(KeyboardInterrupt):
        interleave.write_shards(small, killed, dies_after_one_bucket)
    assert not (killed.parent / "shards" / "index.json").exists()  # nothing published yet
    first_bucket = sorted((killed.parent / "shards").glob(f"{recordings.bucket_name(0, calls[1])}-*.tar"))
    assert first_bucket  # the assembled bucket wrote its own shards
    written = [path.stat().st_mtime_ns for path in first_bucket]
    again = []
    interleave.write_shards(small, killed, lambda function, items: again.append(len(items)) or serial(function, items))
    assert again[1] == calls[1] - 1  # the assembled bucket is kept
    assert again[2] == 0 and [path.stat().st_mtime_ns for path in first_bucket] == written  # and its shards: publishing writes none
    tars = sorted((clean.parent / "shards").glob("*.tar"))
    assert [path.read_bytes() for path in tars] == [(killed.parent / "shards" / path.name).read_bytes() for path in tars]
    assert not (killed.parent / recordings.DOCUMENTS / recordings.SHUFFLE).exists()


# espeak utterances of the bundled sample as recordings: "talk-a" numbered by segment with segment 4
# missing and split over two manifest files; "talk-b" with start times, a 10 s silence before its
# fifth utterance and a second speaker from its seventh; the rest stand alone
TALK_A = [(index, segment) for index, segment in zip(range(10), [0, 1, 2, 3, 5, 6, 7, 8, 9, 10])]
TALK_B = list(range(10, 18))


def recording_manifests(folder: Path) -> list[Path]:
    lines = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
    for entry in lines:
        entry["audio"] = str(MANIFEST.parent / entry["audio"])
    for index, segment in TALK_A:
        lines[index] |= {"recording": "talk-a", "segment": segment, "speaker": "cal"}
    start = 0
    for number, index in enumerate(TALK_B):
        start += 10_000 if number == 4 else 300
        lines[index] |= {"recording": "talk-b", "start_ms": start, "speaker": "ann" if number < 6 else "bob"}
        start += 4_000  # longer than any sample sentence
    parts = [lines[0:6] + lines[18:21], lines[6:18], lines[21:]]
    paths = []
    for number, part in enumerate(parts):
        paths.append(folder / f"part{number}.jsonl")
        paths[-1].write_text("".join(json.dumps(entry) + "\n" for entry in part))
    return paths


@pytest.mark.usefixtures("ray_session")
def test_recording_documents_from_espeak_recordings(tmp_path):
    inputs = recording_manifests(tmp_path)
    cfg = config_module.load(None, ["align.backend='pocketsphinx'", "codebook.clusters=32", "codebook.encoder='mfcc'",
                                    "tokenize.encoder='mfcc'", f"tokenize.codebook='{tmp_path / 'out' / 'codebook'}'",
                                    "interleave.context='recording'", "interleave.same_speaker=true",
                                    "interleave.max_gap_ms=3000"])
    cfg.stages["ingest"].source = "manifest"
    cfg.stages["ingest"].inputs = [str(path) for path in inputs]
    out = tmp_path / "out"
    quiet = {"log": lambda line: None}
    runner.run(cfg, ["ingest", "align"], str(out), **quiet)
    runner.run(cfg, ["codebook"], str(out), **quiet)
    record = runner.run(cfg, ["tokenize", "interleave"], str(out), **quiet).record
    members = read_rows(out / "interleave")
    assert set(members[sample.ROW_KIND].to_pylist()) == {sample.MEMBER}
    index = json.loads((out / "shards" / "index.json").read_text())
    shards = [str(out / "shards" / entry["name"]) for entry in index["shards"]]
    documents = [json.loads(item["json"]) for item in wds.WebDataset(shards, shardshuffle=False)]
    assert len(documents) == index["total_samples"] == record["finalized"]["samples"]
    member_ids = set(members[sample.ROW_KEY].to_pylist())
    held = [source for document in documents for source in document["source_ids"]]
    assert sorted(held) == sorted(member_ids)  # each member in exactly one document

    names = [f"manifest:espeak-{index:04d}" for index in range(24)]
    groups = [[names[i] for i, _ in TALK_A[:4]], [names[i] for i, _ in TALK_A[4:]],  # the missing segment 4
              [names[i] for i in TALK_B[:4]], [names[i] for i in TALK_B[4:6]], [names[i] for i in TALK_B[6:]]]
    groups += [[name] for name in names[18:]]
    for document in documents:
        sample.validate(document)
        assert any(_consecutive_in(document["source_ids"], group) for group in groups), document["source_ids"]
    for group in groups:  # a group all of whose utterances came through is one document
        if member_ids >= set(group):
            assert group in [document["source_ids"] for document in documents]
    assert sum(len(document["source_ids"]) > 1 for document in documents) >= 3


def _consecutive_in(held: list[str], group: list[str]) -> bool:
    return held[0] in group and group[group.index(held[0]):group.index(held[0]) + len(held)] == held


def test_recording_context_is_refused_with_a_bad_bound():
    from sylm_data.pipeline.stage import StageConfigError

    with pytest.raises(StageConfigError, match="max_document_ms"):
        interleave.preflight(interleave.InterleaveConfig(context="recording", max_document_ms=0))
    with pytest.raises(StageConfigError, match="context"):
        interleave.preflight(interleave.InterleaveConfig(context="book"))


def test_member_rows_carry_their_chunks_and_place():
    rows = recording_rows(6)
    table = member_table(rows)
    first = table.to_pylist()[0]
    members = recordings.read_members(table)
    assert first[sample.ROW_KIND] == sample.MEMBER and first[sample.ROW_RECORDING] == "manifest:talk-0"
    assert members.texts[0].as_py() == "The river ran past the mill."
    first_chunks = slice(*members.chunk_bounds[:2])
    assert members.chunk_words[first_chunks].sum() == len(WORDS)
    assert members.chunk_units[first_chunks].sum() == len(UNITS)
    assert members.units.to_pylist()[:len(UNITS)] == [u for u, _, _ in UNITS]
    assert members.offsets[:len(WORDS) + 1].tolist() == [0, 4, 10, 14, 19, 23, 28]
    assert np.array_equal(table[sample.ROW_SEGMENT_INDEX].to_pylist()[:4], [0, 0, 0, 0])


_INTS = st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=5), st.one_of(st.none(), _INTS),
                          st.one_of(st.none(), st.text(max_size=4))), min_size=1, max_size=12),
       st.integers(1, 4), st.randoms(use_true_random=False))
def test_the_shuffle_gathers_rows_as_arrow_takes_them(rows, pieces, random):
    """`taken` (the shuffle's gather: lists of numbers range by range, the rest by Arrow) gives
    Arrow's take, over several chunks, for lists with and without nulls and for strings."""
    table = pa.table({"units": pa.array([units for units, _, _ in rows], pa.list_(pa.int32())),
                      "nullable": pa.array([values for _, values, _ in rows], pa.list_(pa.int64())),
                      "text": pa.array([text for _, _, text in rows], pa.string())})
    cuts = sorted({0, table.num_rows, *(random.randrange(table.num_rows + 1) for _ in range(pieces))})
    chunked = pa.concat_tables([table.slice(start, end - start) for start, end in zip(cuts[:-1], cuts[1:])])
    order = np.array([random.randrange(table.num_rows) for _ in range(random.randrange(2 * table.num_rows))], np.int64)
    made = output.taken(chunked, order)
    assert made.schema == table.schema and made.equals(table.take(pa.array(order, pa.int64())))


@pytest.mark.parametrize("order", [[2], [-1], [0, 5]])
def test_the_shuffle_gather_refuses_rows_the_table_does_not_have(order):
    """A list column alone would be gathered from outside its buffers: the indices are checked first."""
    with pytest.raises(IndexError):
        output.taken(pa.table({"units": pa.array([[1], [2, 3]], pa.list_(pa.int32()))}), np.array(order))
