"""A real local Ray cluster (`ray start --head`, token authentication on): `sylm-data submit` runs
ingest as a Ray job, `sylm-data run --address` attaches to the same head, a missing token is a
clear error. The head is stopped even when a test fails."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sylm_data.sample import MANIFEST
from tests.conftest import read_parquet

TOKEN = "0123456789abcdef0123456789abcdef"
BIN = Path(sys.executable).parent
CLI = str(BIN / "sylm-data")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def agent_ports() -> list[str]:
    """Free ports for the head's agents: their fixed defaults may still be held by an embedded Ray shutting down."""
    names = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
    return [value for name in names for value in (name, str(free_port()))]


def environment(**changes) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env | changes


@pytest.fixture(scope="module")
def head():
    # a temp dir of its own keeps this head out of /tmp/ray, where an embedded ray.init() would find it;
    # `--block` in a session of its own lets the teardown stop exactly this head's processes
    temp = tempfile.mkdtemp(prefix="sylm-ray-", dir="/tmp")
    port, dashboard = free_port(), free_port()
    env = environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    process = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                                "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                                "--num-cpus", "2", *agent_ports(), "--temp-dir", temp, "--disable-usage-stats"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while sylm("submit", "--address", f"http://127.0.0.1:{dashboard}", "--status", "none",
                   env=environment(RAY_AUTH_TOKEN=TOKEN)).stderr.startswith("error: cannot reach"):
            assert process.poll() is None and time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(1)
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a graceful stop takes ~30 s on a loaded machine; its state is temporary
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def sylm(*args, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def ingest_args(out: Path) -> list[str]:
    return ["run", "--stage", "ingest", "--source", "manifest", "--input", str(MANIFEST), "--output", str(out)]


def test_submit_runs_ingest_as_a_ray_job(head, tmp_path):
    out = tmp_path / "out"
    done = sylm("submit", "--address", head["dashboard"], "--env", "SYLM_MARK=1", "--", *ingest_args(out),
                env=environment(RAY_AUTH_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SUCCEEDED" in done.stderr and "ingest:" in done.stdout  # the job's own summary, streamed back
    assert read_parquet(out / "ingest").num_rows == 24


def test_no_wait_status_and_logs(head):
    env = environment(RAY_AUTH_TOKEN=TOKEN)
    submitted = sylm("submit", "--address", head["dashboard"], "--no-wait", "--", "stages", env=env)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job = submitted.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 120
    while (state := sylm("submit", "--address", head["dashboard"], "--status", job, env=env).stdout.strip()) not in (
            "SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(1)
    assert state == "SUCCEEDED"
    assert "interleave" in sylm("submit", "--address", head["dashboard"], "--logs", job, env=env).stdout


def test_a_failing_job_gives_a_failing_exit_status(head, tmp_path):
    failed = sylm("submit", "--address", head["dashboard"], "--", "run", "--stage", "nope", "--output", str(tmp_path),
                  env=environment(RAY_AUTH_TOKEN=TOKEN))
    assert failed.returncode == 1 and "FAILED" in failed.stderr


def test_a_missing_token_is_a_clear_error(head, tmp_path):
    refused = sylm("submit", "--address", head["dashboard"], "--", "stages", env=environment(HOME=str(tmp_path)))
    assert refused.returncode == 2
    assert "requires an auth token" in refused.stderr and "Traceback" not in refused.stderr
    wrong = sylm("submit", "--address", head["dashboard"], "--", "stages", env=environment(RAY_AUTH_TOKEN="f" * 32))
    assert wrong.returncode == 2 and "refused the token from RAY_AUTH_TOKEN" in wrong.stderr


def test_run_attaches_to_the_head_with_address(head, tmp_path):
    out = tmp_path / "out"
    done = sylm(*ingest_args(out), "--address", head["gcs"], env=environment(RAY_AUTH_TOKEN=TOKEN, RAY_AUTH_MODE="token"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_parquet(out / "ingest").num_rows == 24
    unauthorised = sylm(*ingest_args(tmp_path / "other"), "--address", head["gcs"],
                        env=environment(RAY_AUTH_MODE="token", HOME=str(tmp_path)))
    assert unauthorised.returncode == 2 and "set RAY_AUTH_TOKEN" in unauthorised.stderr
