"""The sylm-data command end to end: run with a config, inspect, stages, errors (tests/test_readme.py
runs the quickstart and inspects its output)."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sylm_data.cli import app
from sylm_data.pipeline.shards import ShardWriter
from sylm_data.sample import layouts
from tests.conftest import read_parquet

cli = CliRunner()


def test_stages_lists_what_each_stage_reads_and_writes():
    result = cli.invoke(app, ["stages"])
    assert result.exit_code == 0
    assert "ingest" in result.output and "utterance rows" in result.output


@pytest.mark.parametrize("args", [["--help"], ["stages"], ["run", "--help"], ["eval", "--help"]])
def test_the_cli_answers_without_importing_torch_or_ray(args):
    heavy = ("torch", "ray", "transformers", "deepspeed", "pandas")
    probe = ("import sys\nfrom sylm_data import cli\nsys.argv = ['sylm-data', *sys.argv[1:]]\n"
             "try:\n    cli.main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
             f"print('IMPORTED', sorted({{name.split('.')[0] for name in sys.modules}} & {set(heavy)!r}))")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "IMPORTED []"


def test_library_output_goes_to_the_log_and_the_command_keeps_the_terminal(tmp_path):
    """What libraries write (Python's stderr and stdout, warnings, C code on descriptor 2) lands in the
    log; the command's own lines stay on the terminal; an empty log is not left behind."""
    script = f"""
import os, sys, warnings
from pathlib import Path
from sylm_data import quiet
with quiet.to_log(Path({str(tmp_path / "out" / "runs" / "a.log")!r})) as console:
    print("library stdout")
    print("library stderr", file=sys.stderr)
    warnings.warn("a library warning")
    os.write(2, b"[E core_worker.cc] from C\\n")
    console.line("our progress")
    console.error_line("our note")
with quiet.to_log(Path({str(tmp_path / "empty" / "runs" / "b.log")!r})) as console:
    console.line("nothing else")
print("after")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "our progress\nnothing else\nafter\n" and done.stderr == "our note\n"
    log = (tmp_path / "out" / "runs" / "a.log").read_text()
    for line in ("library stdout", "library stderr", "a library warning", "[E core_worker.cc] from C"):
        assert line in log
    assert not (tmp_path / "empty").exists()


@pytest.mark.usefixtures("ray_session")
def test_run_with_a_config_file_filters_and_inspect_shows_the_rejects(tmp_path, utterances):
    layouts.write_yodas2(tmp_path / "yodas2", utterances[:8], per_recording=4)
    config = tmp_path / "run.toml"
    config.write_text('[run]\nstages = ["ingest"]\n[ingest]\nsource = "yodas2"\nmax_duration_ms = 3200\n')
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", "--config", str(config), "--input", str(tmp_path / "yodas2/data/*/audio/*.tar.gz"),
                              "--output", str(out), "--set", "ingest.min_duration_ms=500"])
    assert result.exit_code == 0, result.output
    kept, rejected = read_parquet(out / "ingest"), read_parquet(out / "rejects" / "ingest")
    assert kept.num_rows + rejected.num_rows == 8 and rejected.num_rows > 0
    assert "label scores (median / 90th percentile / max): loop_share 0.00/0.00/0.00" in cli.invoke(app, ["inspect", str(out / "ingest")]).output
    assert set(rejected["reason"].to_pylist()) == {"too_long"}
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["config"]["ingest"]["min_duration_ms"] == 500 and record["config"]["ingest"]["source"] == "yodas2"
    shown = cli.invoke(app, ["inspect", str(out / "rejects" / "ingest")])
    assert f"ingest/too_long: {rejected.num_rows}" in shown.output


def test_inspect_renders_shards(tmp_path):
    with ShardWriter(tmp_path, extra_index={"speech_text_ratio": 0.3}) as writer:
        segments = [{"modality": "text", "text": "The river"}, {"modality": "speech", "units": [4, 5]}]
        document = {"segments": segments, "kind": "interleaved", "language": "en", "source_id": "s"}
        writer.write("s0", {"json": json.dumps(document).encode()})
    shown = cli.invoke(app, ["inspect", str(tmp_path)])
    assert shown.exit_code == 0
    assert "1 samples in 1 shards" in shown.output and "The river <speech 2 units>" in shown.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "ingest.min_duration_ms=soon"], "min_duration_ms must be int"),
        (["--set", "nonsense"], "expected SECTION.KEY=VALUE"),
        (["--stage", "polish"], "unknown stage 'polish'"),
        (["--source", "tiktok"], "unknown source 'tiktok'"),
        (["--input", "/nonexistent/*.tar"], "no input matches"),
        (["--keep", "align"], "--keep align: not a stage of this run"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, message):
    base = ["run", "--stage", "ingest", "--output", str(tmp_path / "out"), "--input", str(tmp_path)]
    result = cli.invoke(app, base + args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
