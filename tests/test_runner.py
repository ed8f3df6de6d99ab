"""The Ray Data runner: every sample accounted for, resume skips finished partitions, stages chain."""

import functools
import json
import shutil
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import registry, runner
from sylm_data.pipeline.stage import MapOptions, Stage
from sylm_data.sample import layouts
from sylm_data.schemas import stream, utterance
from sylm_data.schemas.reject import Reason
from tests.conftest import emilia_members, read_parquet, write_tar

pytestmark = pytest.mark.usefixtures("ray_session")


def make_config(inputs, source="emilia", overrides=()):
    cfg = config_module.load(None, ["run.stages=['ingest']", *overrides])
    cfg.stages["ingest"].source = source
    cfg.stages["ingest"].inputs = [str(p) for p in inputs]
    return cfg


@pytest.fixture
def corpus(tmp_path, utterances):
    """Three good tars, one with damaged samples, one that is not a tar: 30 input samples."""
    folder = tmp_path / "corpus"
    layouts.write_emilia(folder, utterances, shard_size=8)
    damaged = emilia_members(utterances[0], "D_ok") + emilia_members(utterances[1], "D_lang", language="??")
    damaged += [("D_orphan.mp3", utterances[2].audio), ("D_bad.mp3", b"junk"), ("D_bad.json", b"[")]
    write_tar(folder / "EN-B000100.tar", damaged)
    (folder / "EN-B000101.tar").write_bytes(b"not a tar" * 100)
    return sorted(folder.glob("*.tar")), len(utterances) + 4 + 1


def test_every_input_sample_is_in_the_output_or_the_rejects(tmp_path, corpus):
    tars, n_samples = corpus
    result = runner.run(make_config(tars), [], str(tmp_path / "out"), log=lambda line: None)
    rows = read_parquet(tmp_path / "out" / "ingest")
    rejects = read_parquet(tmp_path / "out" / "rejects" / "ingest")
    assert rows.schema.equals(utterance.SCHEMA, check_metadata=False)
    ids = rows["id"].to_pylist() + rejects["id"].to_pylist()
    assert len(ids) == len(set(ids)) == n_samples
    reasons = dict(zip(rejects["id"].to_pylist(), rejects["reason"].to_pylist()))
    assert reasons["emilia:D_lang"] == Reason.UNKNOWN_LANGUAGE
    assert reasons["emilia:D_orphan"] == Reason.MISSING_METADATA
    assert reasons["emilia:D_bad"] == Reason.BAD_METADATA
    assert [r for i, r in reasons.items() if i.startswith("emilia:EN-B000101")] == [Reason.UNREADABLE_INPUT]
    (counts,) = result.record["this_run"]
    assert counts == {"stage": "ingest", "in": n_samples, "out": rows.num_rows,
                      "rejected": {"bad_metadata": 1, "missing_metadata": 1, "unknown_language": 1, "unreadable_input": 1}}
    assert result.record["partitions"] == {"total": 5, "skipped_done": 0, "processed": 5}
    assert result.record["throughput"]["audio_s"] == pytest.approx(pc.sum(rows["duration_ms"]).as_py() / 1000)
    assert json.loads(open(result.record_path).read())["run_id"] == result.record["run_id"]


def test_a_rerun_skips_finished_partitions_and_changes_nothing(tmp_path, corpus):
    tars, _ = corpus
    out = tmp_path / "out"
    runner.run(make_config(tars), [], str(out), log=lambda line: None)
    before = sorted(p.name for p in (out / "ingest").rglob("*.parquet"))
    # what a task of a killed run staged late, after the clean of its partition: a finished run removes it
    done_partition = next((out / "ingest" / "_done").glob("*.json")).stem
    late = [folder / ".tmp" / "20261204-005041-dead00" / done_partition / "late.parquet"
            for folder in (out / "ingest", out / "rejects" / "ingest")]
    for path in late:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    again = runner.run(make_config(tars), [], str(out), log=lambda line: None)
    assert not any(path.exists() for path in late)
    assert again.record["partitions"] == {"total": 5, "skipped_done": 5, "processed": 0}
    assert sorted(p.name for p in (out / "ingest").rglob("*.parquet")) == before
    assert again.record["cumulative"][0]["in"] == 29
    # a new input extends the same output; only it is processed
    extra = layouts.write_emilia(tmp_path / "more", layouts.sample_utterances()[:3], first_shard=7)
    grown = runner.run(make_config(tars + extra), [], str(out), log=lambda line: None)
    assert grown.record["partitions"]["processed"] == 1
    assert read_parquet(out / "ingest").num_rows == 24 + 1 + 3


def test_an_output_written_with_another_config_is_refused(tmp_path, corpus):
    tars, _ = corpus
    runner.run(make_config(tars), [], str(tmp_path / "out"), log=lambda line: None)
    with pytest.raises(runner.RunError, match="another config"):
        runner.run(make_config(tars, overrides=["ingest.min_duration_ms=1000"]), [], str(tmp_path / "out"))


def test_run_errors_are_one_clear_line(tmp_path):
    with pytest.raises(runner.RunError, match="no input"):
        runner.run(make_config([]), [], str(tmp_path / "out"))
    with pytest.raises(runner.RunError, match="unknown source"):
        runner.run(make_config([tmp_path], source="librispeech"), [], str(tmp_path / "out"))
    with pytest.raises(runner.RunError, match="no input matches"):
        runner.run(make_config([tmp_path / "*.tar"]), [], str(tmp_path / "out"))


@pytest.mark.parametrize(("marker", "says"), [('{"rows_out": 3}', "lacks run_id, config_hash"), ("{not json", "not a partition marker")])
def test_an_input_folder_sylm_data_did_not_write_is_one_clear_line(tmp_path, marker, says):
    """A hand-made `tokenize` folder with markers of its own: the run names the marker and what it
    lacks, instead of a KeyError from deep inside."""
    done = tmp_path / "out" / "tokenize" / "_done"
    done.mkdir(parents=True)
    (done / "part-0.json").write_text(marker)
    cfg = config_module.load(None, ["run.stages=['interleave']"])
    with pytest.raises(runner.RunError, match=f"part-0.json.*{says}"):
        runner.run(cfg, ["interleave"], str(tmp_path / "out"), log=lambda line: None)


def test_rows_without_audio_are_read_in_larger_batches():
    """A run that starts after tokenize reads rows of a few KB (no audio): in batches of
    run.batch_rows_without_audio; sources, the ingest output and rows joined with their audio keep
    run.batch_rows. Neither may be below 1."""
    run = config_module.load(None, ["run.batch_rows=3", "run.batch_rows_without_audio=50"]).run
    assert runner.read_batch_rows(None, None, run) == 3
    assert runner.read_batch_rows(registry.STAGES["ingest"].contract, None, run) == 3
    assert runner.read_batch_rows(registry.STAGES["align"].contract, "out/ingest", run) == 3
    assert runner.read_batch_rows(registry.STAGES["align"].contract, None, run) == 50
    assert runner.read_batch_rows(registry.STAGES["tokenize"].contract, None, run) == 50
    with pytest.raises(config_module.ConfigError, match="batch_rows_without_audio must be at least 1"):
        config_module.load(None, ["run.batch_rows_without_audio=0"])


@dataclass
class ShoutConfig:
    reject_word: str = "river"


def shout(batch: pa.Table, config: ShoutConfig) -> pa.Table:
    """A toy downstream stage: upper-cases text, rejects rows mentioning a word."""
    rows = batch.to_pylist()
    for row in rows:
        if row[stream.REJECT_REASON] is not None:
            continue
        if config.reject_word in row["text"].lower():
            row.update({stream.REJECT_STAGE: "shout", stream.REJECT_REASON: Reason.ALIGN_FAILED.value,
                        stream.REJECT_DETAIL: "toy", "audio": None})
        else:
            row["text"] = row["text"].upper()
    return pa.Table.from_pylist(rows, schema=batch.schema)


def whisper(batch: pa.Table) -> pa.Table:
    """A second toy stage, after shout: lower-cases text, rejects rows mentioning bread."""
    rows = batch.to_pylist()
    for row in rows:
        if row[stream.REJECT_REASON] is not None:
            continue
        if "bread" in row["text"].lower():
            row.update({stream.REJECT_STAGE: "whisper", stream.REJECT_REASON: Reason.FILLER_WORDS.value,
                        stream.REJECT_DETAIL: "toy", "audio": None})
        else:
            row["text"] = row["text"].lower()
    return pa.Table.from_pylist(rows, schema=batch.schema)


@dataclass
class WhisperConfig:
    pass


@pytest.fixture
def with_shout_stage(monkeypatch):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    # an actor-pool stage (as model-holding stages are), so the fused and separate runs cover that path
    stage = Stage("shout", "ingest", utterance.SCHEMA, "toy", ShoutConfig, lambda config: functools.partial(shout, config=config),
                  map_options=lambda config: MapOptions(actors=True, concurrency=1, batch_size=8))
    after = Stage("whisper", "shout", utterance.SCHEMA, "toy", WhisperConfig, lambda config: whisper)
    monkeypatch.setattr(registry, "STAGES", {"ingest": registry.STAGES["ingest"], "shout": stage, "whisper": after})


def _markers(out, stage: str) -> dict[str, dict]:
    folder = out / stage / "_done"
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}


@pytest.mark.usefixtures("with_shout_stage")
def test_a_stage_reads_the_previous_output_or_runs_fused_and_kept_with_the_same_result(tmp_path, corpus, monkeypatch):
    """Separate runs and one fused run that keeps shout (and, starting at ingest, ingest) write the same
    rows; a kill between a partition's kept commit and its final one leaves nothing a rerun repeats or loses."""
    from sylm_data.pipeline import output

    tars, _ = corpus
    quiet = {"log": lambda line: None}
    separate, fused = tmp_path / "separate", tmp_path / "fused"
    runner.run(make_config(tars), ["ingest"], str(separate), **quiet)
    alone = runner.run(make_config(tars), ["shout"], str(separate), **quiet)
    assert alone.record["this_run"][0]["in"] == 25 and alone.record["this_run"][0]["rejected"] == {"align_failed": 2}

    # the fused run is killed (here: raises) after its second partition's kept stages are placed, before its final one
    place, placed = output._place, []

    def killed_before_the_final_commit(layout, stage, partition, moves, marker):
        placed.append((stage, partition))
        if stage == "whisper" and len([s for s, _ in placed if s == "whisper"]) == 2:
            raise RuntimeError("killed")
        place(layout, stage, partition, moves, marker)

    monkeypatch.setattr(output, "_place", killed_before_the_final_commit)
    with pytest.raises(RuntimeError, match="killed"):
        runner.run(make_config(tars), ["ingest", "shout", "whisper"], str(fused), keep=["shout"], **quiet)
    monkeypatch.setattr(output, "_place", place)
    half = placed[-1][1]
    assert [stage for stage, partition in placed if partition == half] == ["ingest", "shout", "whisper"]
    assert half in _markers(fused, "shout") and half not in _markers(fused, "whisper")
    lines = []
    both = runner.run(make_config(tars), ["ingest", "shout", "whisper"], str(fused), keep=["shout"], log=lines.append)
    assert "5 partitions, 1 already done" in lines[0]  # the half-committed partition is computed again
    assert both.record["kept"] == {"ingest": str(fused / "ingest"), "shout": str(fused / "shout")}
    assert not list(fused.glob("**/.tmp/*/*/*.parquet"))  # nothing staged is left, of either run
    # the ingest rows (the audio) and the kept shout rows are those the separate runs wrote
    for folder in ("ingest", "shout", "rejects/shout", "rejects/ingest"):
        a, b = read_parquet(separate / folder), read_parquet(fused / folder)
        assert a.sort_by("id").equals(b.sort_by("id")), folder
    assert all(text == text.upper() for text in read_parquet(fused / "shout")["text"].to_pylist())
    # each kept marker is the one a run ending at that stage writes: counts from the run's input, its rejects so far
    shout_marker = _markers(fused, "shout")
    assert sum(m["rows_in"] for m in shout_marker.values()) == 29 and sum(m["rows_out"] for m in shout_marker.values()) == 23
    assert all(set(m["rejected"]) <= {"ingest/bad_metadata", "ingest/missing_metadata", "ingest/unknown_language",
                                      "ingest/unreadable_input", "shout/align_failed"} for m in shout_marker.values())
    assert {m["config_hash"] for m in shout_marker.values()} == {make_config(tars).stage_hash(["ingest", "shout"])}
    # a stage's hash chains from the rows it reads: the same alone as fused, so a stage run alone is done
    assert {m["config_hash"] for m in _markers(separate, "shout").values()} == {m["config_hash"] for m in shout_marker.values()}
    lines.clear()
    runner.run(make_config(tars), ["shout", "whisper"], str(fused), log=lines.append)
    assert "5 partitions, 5 already done" in lines[0]
    # and a run of the next stage reads the kept rows as it reads a final stage's
    later = tmp_path / "later"
    for folder in ("ingest", "shout"):
        shutil.copytree(fused / folder, later / folder)
    after = runner.run(make_config(tars), ["whisper"], str(later), **quiet)
    assert read_parquet(later / "whisper").sort_by("id").equals(read_parquet(fused / "whisper").sort_by("id"))
    assert after.record["this_run"][0] == {"stage": "whisper", "in": 23, "out": 21, "rejected": {"filler_words": 2}}
    with pytest.raises(runner.RunError, match="--keep align: not a stage of this run"):
        runner.run(make_config(tars), ["ingest", "shout"], str(tmp_path / "other"), keep=["align"])
    with pytest.raises(registry.PlanError, match="stages are"):
        registry.plan(["ingest", "align-with-typo"])


def test_rows_of_an_older_contract_read_with_its_new_nullable_columns_null(tmp_path):
    from sylm_data.pipeline import partitions
    from sylm_data.schemas import aligned
    from sylm_data.sources import Partition
    from tests.conftest import commit_rows

    old = [field for field in aligned.SCHEMA if field.name not in (utterance.RECORDING, utterance.RECORDING_START_MS)]
    row = {"id": "manifest:a", "source": "manifest", "audio_format": "wav", "sample_rate": 16000, "duration_ms": 900,
           "text": "hi", "language": "en", "segment_index": 3, "words": [], "aligner": "pocketsphinx", "word_unit": "word"}
    commit_rows(tmp_path / "align", "p0", pa.Table.from_pylist([row], schema=pa.schema(old)))
    [batch] = partitions.read_stage_partition(Partition("p0", "manifest", str(tmp_path / "align" / "p0")), aligned.SCHEMA, 8)
    [read] = batch.to_pylist()
    assert read[utterance.RECORDING] is None and read[utterance.RECORDING_START_MS] is None and read[utterance.SEGMENT_INDEX] == 3
    assert batch.schema == stream.in_flight(aligned.SCHEMA)
