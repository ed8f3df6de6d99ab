"""YODAS2 as published: recordings streamed out of their archive and cut as they decode, subsets
kept apart, segments that run past the audio clipped within a tolerance."""

import gc
import io
import json
import tarfile
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from sylm_data import audio
from sylm_data.pipeline.partitions import read_source_partition, source_ids
from sylm_data.pipeline.stage import StageConfigError
from sylm_data.sample import layouts
from sylm_data.schemas import stream
from sylm_data.sources import READERS
from sylm_data.sources.yodas2 import parse_utterance_id
from sylm_data.stages import ingest

RATE = layouts.YODAS2_RATE


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * RATE)) * 0.1).astype(np.float32)


def wav(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def write_subset(root: Path, recordings: list[tuple[str, bytes | None, dict]], subset: str = "en000") -> Path:
    """data/<subset>/ with one archive of `./<audio_id>.wav` members (None: no audio) and its text file."""
    folder = root / "data" / subset
    for name in ("audio", "text"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    archive_path = folder / "audio" / "00000000.tar.gz"
    with tarfile.open(archive_path, "w:gz", compresslevel=1) as archive:
        for audio_id, data, _ in recordings:
            if data is not None:
                layouts.add_member(archive, f"./{audio_id}.wav", data)
    entries = [{"audio_id": audio_id, "text": texts} for audio_id, _, texts in recordings]
    (folder / "text" / "00000000.json").write_text(json.dumps(entries))
    return archive_path


def ingested(path: Path, config: ingest.IngestConfig | None = None, subsets=()) -> list[dict]:
    """Every record of the archive's partitions, through ingest, as rows."""
    tables = [
        ingest.transform(batch, config or ingest.IngestConfig())
        for partition in READERS["yodas2"].partitions([str(path)])
        for batch in read_source_partition(partition, "ingest", batch_rows=4, subsets=subsets)
    ]
    return pa.concat_tables(tables).to_pylist()


def reasons(rows: list[dict]) -> dict[str, str | None]:
    return {row["id"].split(":", 1)[1]: row[stream.REJECT_REASON] for row in rows}


# --- cutting as the audio streams -----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_cut_gives_each_span_once_as_a_slice_of_the_whole_would(data):
    length = data.draw(st.integers(0, 3000))
    signal = np.arange(length, dtype=np.float32)
    sizes = data.draw(st.lists(st.integers(1, 400), min_size=1, max_size=40))
    spans = data.draw(st.lists(st.tuples(st.integers(0, length + 50), st.integers(1, 300))
                               .map(lambda pair: (pair[0], pair[0] + pair[1])), max_size=12))
    longest = max((last - first for first, last in spans), default=0)
    alive: list[weakref.ref] = []
    most_held = 0

    def blocks():
        nonlocal most_held
        position, turn = 0, 0
        while position < length:
            size = sizes[turn % len(sizes)]
            turn += 1
            most_held = max(most_held, sum(len(ref()) for ref in alive if ref() is not None))
            block = signal[position : position + size].copy()
            alive.append(weakref.ref(block))
            position += len(block)
            yield block
            del block

    got = list(audio.cut(blocks(), spans))
    assert sorted(index for index, _ in got) == list(range(len(spans)))
    assert [index for index, _ in got] == sorted(range(len(spans)), key=lambda i: (*spans[i], i))
    for index, samples in got:
        first, last = spans[index]
        assert np.array_equal(samples, signal[first:last])  # cut short at the end, empty past it
    # what is held: the longest span and a block either side, never the signal
    assert most_held <= longest + 2 * max(sizes)


@pytest.mark.parametrize(("fmt", "subtype", "channels"), [
    ("WAV", "PCM_16", 1), ("WAV", "PCM_16", 2), ("WAV", "PCM_24", 1), ("WAV", "FLOAT", 2), ("FLAC", "PCM_16", 2),
])
def test_a_streamed_decode_gives_the_samples_decode_gives(fmt, subtype, channels):
    samples = np.stack([noise(1.3, seed) for seed in range(channels)], axis=1)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, RATE, format=fmt, subtype=subtype)
    data = buffer.getvalue()

    class ForwardOnly:  # like a tar member read as a stream: no going back
        def __init__(self):
            self.file = io.BytesIO(data)

        def read(self, size=-1):
            return self.file.read(size)

    with audio.open_stream(ForwardOnly()) as streamed:
        blocks = list(streamed.blocks())
        assert streamed.sample_rate == RATE and streamed.samples_read == len(samples)
    whole = audio.decode(data)
    assert np.array_equal(np.concatenate(blocks), whole.samples)


def test_audio_that_does_not_open_is_a_decode_error():
    with pytest.raises(audio.AudioDecodeError), audio.open_stream(io.BytesIO(b"not audio at all " * 50)):
        pass
    with pytest.raises(audio.AudioDecodeError, match="no audio bytes"), audio.open_stream(io.BytesIO(b"")):
        pass


# --- the reader -------------------------------------------------------------------------------


def test_cuts_are_the_flac_of_the_whole_recording_decoded(tmp_path, utterances):
    (archive,) = layouts.write_yodas2(tmp_path, utterances[:6], per_recording=3)
    with tarfile.open(archive) as opened:
        recordings = {name[2:-4]: audio.decode(opened.extractfile(name).read()) for name in opened.getnames()}
    records = [record for partition in READERS["yodas2"].partitions([str(archive)])
               for record in READERS["yodas2"].read(partition)]
    assert len(records) == 6 and all(record.reject is None for record in records)
    for record in records:
        audio_id, start_ms, end_ms = parse_utterance_id(record.key)
        whole = recordings[audio_id]
        expected = whole.samples[start_ms * RATE // 1000 : end_ms * RATE // 1000]
        assert record.audio == audio.encode_flac(expected, RATE)  # bit for bit
        assert record.language == "en" and record.declared_duration_ms == end_ms - start_ms


def test_utterances_come_in_start_order_and_may_overlap(tmp_path):
    signal = noise(5)
    texts = {"b-00002-00000300-00000400": "third", "b-00000-00000000-00000350": "first, holding the second",
             "b-00001-00000100-00000200": "second", "b-00003-00000300-00000320": "fourth"}
    archive = write_subset(tmp_path, [("b", wav(signal), texts)])
    records = list(READERS["yodas2"].read(READERS["yodas2"].partitions([str(archive)])[0]))
    assert [record.key for record in records] == [  # by start, then end
        "b-00000-00000000-00000350", "b-00001-00000100-00000200", "b-00003-00000300-00000320", "b-00002-00000300-00000400"]
    assert [(record.recording, record.recording_start_ms) for record in records] == [
        ("b", 0), ("b", 1000), ("b", 3000), ("b", 3000)]
    reference = audio.decode(wav(signal)).samples
    for record in records:
        _, start_ms, end_ms = parse_utterance_id(record.key)
        cut = audio.decode(record.audio).samples
        assert np.array_equal(cut, reference[start_ms * 24 : end_ms * 24])


def test_segments_past_the_end_are_clipped_within_the_tolerance(tmp_path):
    texts = {"a-00000-00000000-00000100": "the first words",
             "a-00001-00000150-00000230": "runs on a little",  # 300 ms past the 2 s of audio
             "a-00002-00000100-00000400": "runs on for two seconds",
             "a-00003-00000250-00000300": "starts after it ends"}
    archive = write_subset(tmp_path, [("a", wav(noise(2)), texts)])
    rows = ingested(archive)
    assert reasons(rows) == {"a-00000-00000000-00000100": None, "a-00001-00000150-00000230": None,
                             "a-00002-00000100-00000400": "segment_out_of_range",
                             "a-00003-00000250-00000300": "segment_out_of_range"}
    clipped = next(row for row in rows if row["id"].endswith("00000230"))
    assert clipped["duration_ms"] == 500
    assert json.loads(clipped["meta"]) == {"audio_id": "a", "start_ms": 1500, "end_ms": 2300, "overrun_ms": 300,
                                           "source_format": "wav", "subset": "en000"}
    details = {row["id"]: row[stream.REJECT_DETAIL] for row in rows}
    assert "ends 2000 ms past the recording's audio" in details["yodas2:a-00002-00000100-00000400"]
    assert details["yodas2:a-00003-00000250-00000300"] == "2500-3000 ms outside a 2000 ms recording"

    strict = reasons(ingested(archive, ingest.IngestConfig(overrun_tolerance_ms=0)))
    assert strict["a-00001-00000150-00000230"] == "segment_out_of_range" and strict["a-00000-00000000-00000100"] is None


def test_recordings_without_utterances_broken_audio_and_spans_that_are_not_captions(tmp_path, utterances):
    (archive,) = layouts.write_yodas2(tmp_path / "built", utterances[:4], per_recording=2, silent_recordings=1)
    entries = json.loads((tmp_path / "built/data/en000/text/00000000.json").read_text())
    assert entries[-1] == {"audio_id": "Vid000-02x", "text": {}}
    got = reasons(ingested(archive))
    assert got.pop("Vid000-02x") == "empty_text" and set(got.values()) == {None} and len(got) == 4

    archive = write_subset(tmp_path / "own", [
        ("junk", b"RIFF this is not a wave file at all" * 20, {"junk-00000-00000000-00000100": "never heard"}),
        ("c", wav(noise(2)), {"c-00000-00000000-00200000": "half an hour and more",
                              "c-00001-00000050-00000150": "one second"}),
    ])
    got = reasons(ingested(archive))
    assert got == {"junk-00000-00000000-00000100": "decode_error", "c-00000-00000000-00200000": "too_long",
                   "c-00001-00000050-00000150": None}


# --- subsets -----------------------------------------------------------------------------------


def test_the_subset_is_kept_and_ingest_subsets_chooses(tmp_path, utterances):
    manual = layouts.write_yodas2(tmp_path, utterances[:4], subset="en000", per_recording=2)
    automatic = layouts.write_yodas2(tmp_path, utterances[4:8], subset="en100", per_recording=2)
    only_automatic = ingest.IngestConfig(subsets=["en100"])
    rows = ingested(manual[0], only_automatic)
    assert [row[stream.REJECT_REASON] for row in rows] == ["subset_filtered"] * 4
    assert rows[0][stream.REJECT_DETAIL] == "subset en000 not in ['en100']"
    rows = ingested(automatic[0], only_automatic)
    assert [row[stream.REJECT_REASON] for row in rows] == [None] * 4
    assert all(json.loads(row["meta"])["subset"] == "en100" and row["language"] == "en" for row in rows)

    # told the subsets, the reader never opens an excluded archive: the same ids, no audio decoded
    partition = READERS["yodas2"].partitions([str(manual[0])])[0]
    ids = source_ids(partition)
    manual[0].write_bytes(b"the audio is never read")
    assert source_ids(partition, subsets=["en100"]) == ids
    rows = ingested(manual[0], only_automatic, subsets=["en100"])
    assert [row[stream.REJECT_REASON] for row in rows] == ["subset_filtered"] * 4


def test_ingest_subsets_and_the_overrun_tolerance_are_checked_before_a_run(tmp_path):
    ingest.preflight(ingest.IngestConfig(source="yodas2", subsets=["en000", "iw000", "abq100"]))
    with pytest.raises(StageConfigError, match="ingest.subsets chooses YODAS2 subsets"):
        ingest.preflight(ingest.IngestConfig(source="emilia", subsets=["en000"]))
    with pytest.raises(StageConfigError, match="'EN000' is not a YODAS2 subset name"):
        ingest.preflight(ingest.IngestConfig(source="yodas2", subsets=["EN000"]))
    with pytest.raises(StageConfigError, match="overrun_tolerance_ms is -1"):
        ingest.preflight(ingest.IngestConfig(source="yodas2", overrun_tolerance_ms=-1))


# --- memory ------------------------------------------------------------------------------------


def test_a_long_recording_is_never_held_whole(tmp_path):
    """Three minutes (17 MB as float32, 8.6 MB as wav) of one-second utterances: reading it
    allocates a small part of that (a few copies of one utterance)."""
    signal = noise(180, seed=3)
    texts = {f"long-{index:05d}-{index * 500:08d}-{index * 500 + 100:08d}": "words" for index in range(36)}
    archive = write_subset(tmp_path, [("long", wav(signal), texts)])
    partition = READERS["yodas2"].partitions([str(archive)])[0]
    del signal
    gc.collect()
    tracemalloc.start()
    try:
        count = sum(record.reject is None for record in READERS["yodas2"].read(partition))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 36
    assert peak < 180 * RATE * 4 / 4, f"peak {peak / 2**20:.1f} MiB"  # whole-recording decoding: about 25 MiB


@pytest.mark.parametrize(("subset", "language"), [("iw000", "he"), ("sh000", "sr"), ("in000", "id"), ("jw000", "jv")])
def test_subsets_named_with_youtubes_withdrawn_codes_get_their_language(tmp_path, utterances, subset, language):
    (archive,) = layouts.write_yodas2(tmp_path, utterances[:2], subset=subset, per_recording=2)
    rows = ingested(archive, ingest.IngestConfig(max_foreign_letter_share=1.0, max_language_mismatch=None, max_code_switch_share=None))
    assert [(row[stream.REJECT_REASON], row["language"]) for row in rows] == [(None, language)] * 2


def test_a_run_hands_ingest_subsets_to_the_reader_and_the_id_listing(tmp_path, utterances):
    """What the runner's read and duplicate-listing tasks do with a run's config, without Ray."""
    from dataclasses import asdict

    from sylm_data.pipeline import config as config_module
    from sylm_data.pipeline import duplicates, registry, runner

    (manual,) = layouts.write_yodas2(tmp_path, utterances[:4], subset="en000", per_recording=2)
    (partition,) = READERS["yodas2"].partitions([str(manual)])
    manual.write_bytes(b"the audio is never read")
    config = config_module.load(None, ["ingest.source='yodas2'", "ingest.subsets=['en100']"])
    subsets = runner._subsets(registry.STAGES["ingest"], config)
    assert subsets == ("en100",)
    runner._list_ids(partition, str(tmp_path / "ids"), subsets)
    assert pa.parquet.read_table(duplicates.ids_file(tmp_path / "ids", partition.id)).num_rows == 4
    batch = pa.table({"partition": [json.dumps(asdict(partition))], "first_elsewhere": ["{}"], "near_duplicate_of": ["{}"]})
    read = pa.concat_tables(runner._read(batch, registry.STAGES["ingest"], 8, None, None, subsets))
    assert read[stream.REJECT_REASON].to_pylist() == ["subset_filtered"] * 4
