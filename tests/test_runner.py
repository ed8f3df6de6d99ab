"""The Ray Data runner: every sample accounted for, resume skips finished partitions, stages chain."""

import functools
import json
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
    again = runner.run(make_config(tars), [], str(out), log=lambda line: None)
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


@pytest.fixture
def with_shout_stage(monkeypatch):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    # an actor-pool stage (as model-holding stages are), so the fused and separate runs cover that path
    stage = Stage("shout", "ingest", utterance.SCHEMA, "toy", ShoutConfig, lambda config: functools.partial(shout, config=config),
                  map_options=lambda config: MapOptions(actors=True, concurrency=1, batch_size=8))
    monkeypatch.setattr(registry, "STAGES", {"ingest": registry.STAGES["ingest"], "shout": stage})


@pytest.mark.usefixtures("with_shout_stage")
def test_a_stage_reads_the_previous_output_or_runs_fused_with_the_same_result(tmp_path, corpus):
    tars, _ = corpus
    quiet = {"log": lambda line: None}
    separate, fused = tmp_path / "separate", tmp_path / "fused"
    runner.run(make_config(tars), ["ingest"], str(separate), **quiet)
    alone = runner.run(make_config(tars), ["shout"], str(separate), **quiet)
    both = runner.run(make_config(tars), ["ingest", "shout"], str(fused), **quiet)
    assert alone.record["this_run"][0]["in"] == 25 and alone.record["this_run"][0]["rejected"] == {"align_failed": 2}
    assert both.record["this_run"][1] == alone.record["this_run"][0]
    assert not (fused / "ingest" / ".tmp").exists() or not list((fused / "ingest" / ".tmp").iterdir())
    # the ingest rows (the audio) are stored once in a fused run too; other stages only at the end
    for folder in ("ingest", "shout", "rejects/shout", "rejects/ingest"):
        a, b = read_parquet(separate / folder), read_parquet(fused / folder)
        assert a.sort_by("id").equals(b.sort_by("id")), folder
    assert all(text == text.upper() for text in read_parquet(fused / "shout")["text"].to_pylist())
    with pytest.raises(registry.PlanError, match="stages are"):
        registry.plan(["ingest", "align-with-typo"])
