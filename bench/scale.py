"""Scale-out overhead: one ingest run on the embedded Ray with 1 and 2 CPU workers, and the same run
submitted as a Ray job to a local cluster (`ray start --head`), side by side.

    python bench/scale.py [--copies 21] [--per-tar 48]

Each row is a fresh `sylm-data` process, so every figure includes starting (or attaching to) Ray.
The submission overhead is the submitted run's wall time over the embedded 2-worker run's.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sylm_data.sample import layouts  # noqa: E402
from tests.test_cluster import agent_ports, free_port  # noqa: E402

BIN = Path(sys.executable).parent


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=21, help="repeat the 24-utterance sample this many times")
    parser.add_argument("--per-tar", type=int, default=48)
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled"}
    with tempfile.TemporaryDirectory(prefix="sylm-scale-", dir="/tmp") as scratch:
        scratch = Path(scratch)
        tars = layouts.write_emilia(scratch / "corpus", layouts.sample_utterances() * args.copies, shard_size=args.per_tar)
        inputs = [value for tar in tars for value in ("--input", str(tar))]

        def ingest(out: str, *extra: str) -> list[str]:
            return ["run", "--stage", "ingest", "--source", "emilia", *inputs, "--output", out, *extra]

        rows = []
        for workers in (1, 2):
            seconds = timed([str(BIN / "sylm-data"), *ingest(str(scratch / f"embedded{workers}"),
                                                             "--set", f"ingest.workers={workers}")], env)
            rows.append((f"embedded Ray, {workers} CPU worker{'s' * (workers > 1)}", seconds))
        port, dashboard = free_port(), free_port()
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                                 "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                                 "--num-cpus", "2", *agent_ports(), "--temp-dir", str(scratch / "ray"), "--disable-usage-stats"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(15)  # the head's start-up is not part of a submitted run
            seconds = timed([str(BIN / "sylm-data"), "submit", "--address", f"http://127.0.0.1:{dashboard}", "--",
                             *ingest(str(scratch / "cluster"), "--set", "ingest.workers=2")], env)
            rows.append(("local cluster, sylm-data submit, 2 workers", seconds))
        finally:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=120)
    utterances = 24 * args.copies
    print(f"{utterances:,} utterances in {len(tars)} tars")
    print(f"{'':<44} {'wall s':>8} {'utt/s':>8} {'x embedded-2':>13}")
    reference = rows[1][1]
    for name, seconds in rows:
        print(f"{name:<44} {seconds:>8.1f} {utterances / seconds:>8.1f} {seconds / reference:>13.2f}")


if __name__ == "__main__":
    main()
