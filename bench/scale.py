"""Scale-out: one ingest run on the embedded Ray with 1 and 2 CPU workers, and the same run
submitted as a Ray job to a local cluster (`ray start --head`), side by side; and interleave + shards
on synthetic tokenized rows of growing size, with 1 and 2 workers.

    python bench/scale.py [--copies 21] [--per-tar 48] [--skip-ingest]
                          [--interleave-rows 100000,400000,1600000] [--partition-rows 10000] [--set run.batch_rows_without_audio=64]

Each row is a fresh `sylm-data` process, so every figure includes starting (or attaching to) Ray.
The submission overhead is the submitted run's wall time over the embedded 2-worker run's.
Interleave: the driver's peak RSS is its own process's high-water mark (VmHWM), Ray's processes
left out; `rows s` runs from the process's start (imports and Ray's start-up included) to the
driver's "finalizing" line, `shards s` from there to index.json being written; `load` is the
machine's 1-minute load average as the run ends (other work on it slows every figure).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import synthetic_tokenized  # noqa: E402
from sylm_data.pipeline import config as config_module  # noqa: E402
from sylm_data.pipeline.output import DONE  # noqa: E402
from sylm_data.pipeline.shards import INDEX  # noqa: E402
from sylm_data.sample import layouts  # noqa: E402
from tests.test_cluster import agent_ports, free_port  # noqa: E402

BIN = Path(sys.executable).parent


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def ingest_benchmark(copies: int, per_tar: int, env: dict, scratch: Path) -> None:
    tars = layouts.write_emilia(scratch / "corpus", layouts.sample_utterances() * copies, shard_size=per_tar)
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
    utterances = 24 * copies
    print(f"{utterances:,} utterances in {len(tars)} tars")
    print(f"{'':<44} {'wall s':>8} {'utt/s':>8} {'x embedded-2':>13}")
    reference = rows[1][1]
    for name, seconds in rows:
        print(f"{name:<44} {seconds:>8.1f} {utterances / seconds:>8.1f} {seconds / reference:>13.2f}")


def high_water_mb(pid: int) -> float:
    """The peak resident memory of process `pid` alone (its children are processes of their own)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


def tokenize_folder(scratch: Path, rows: int, partition_rows: int, config_hash: str) -> Path:
    """DIR/tokenize of `rows` synthetic rows: links to the first partitions of a pool shared by every
    size, generated one partition at a time as first needed."""
    pool, folder = scratch / "tokenized", scratch / f"tokenize-{rows}"
    for number in range(rows // partition_rows):
        partition = f"synthetic-{number:05d}"
        if not (pool / DONE / f"{partition}.json").exists():
            synthetic_tokenized.commit_partition(pool, partition, partition_rows, number, config_hash, "bench")
        (folder / DONE).mkdir(parents=True, exist_ok=True)
        (folder / partition).symlink_to(pool / partition)
        (folder / DONE / f"{partition}.json").symlink_to(pool / DONE / f"{partition}.json")
    return folder


def run_interleave(tokenize: Path, output: Path, workers: int, overrides: list[str], env: dict) -> dict:
    """One `sylm-data run --stage interleave` as a subprocess: its wall time, phases and driver peak RSS."""
    output.mkdir()
    (output / "tokenize").symlink_to(tokenize)
    command = [sys.executable, "-m", "sylm_data.cli", "run", "--stage", "interleave", "--output", str(output),
               "--set", f"run.num_cpus={workers}", *(value for override in overrides for value in ("--set", override))]
    start = time.time()
    driver = subprocess.Popen(command, env=env | {"PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    peak_mb, lines, finalizing = 0.0, [], None

    def watch() -> None:  # VmHWM only grows: the last reading before the driver exits is its peak
        nonlocal peak_mb
        while driver.poll() is None:
            try:
                peak_mb = high_water_mb(driver.pid)
            except (OSError, RuntimeError):  # exiting: /proc has let go of its memory map
                break
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for line in driver.stdout:
        lines.append(line)
        if finalizing is None and line.startswith("interleave: finalizing"):
            finalizing = time.time()
    driver.wait()
    end = time.time()
    watcher.join()
    if driver.returncode:
        raise RuntimeError(f"interleave run failed ({driver.returncode}):\n{''.join(lines[-30:])}")
    [record_path] = (output / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    return {"wall_s": end - start, "rows_s": finalizing - start, "shards_s": (output / "shards" / INDEX).stat().st_mtime - finalizing,
            "samples": record["finalized"]["samples"], "rss_mb": peak_mb, "load": os.getloadavg()[0]}


def interleave_benchmark(sizes: list[int], partition_rows: int, overrides: list[str], env: dict, scratch: Path) -> None:
    config_hash = config_module.load(None, overrides).stage_hash(["tokenize"])
    results = {}
    for rows in sizes:
        tokenize = tokenize_folder(scratch, rows, partition_rows, config_hash)
        for workers in (1, 2):
            output = scratch / f"interleave-{rows}-{workers}"
            results[rows, workers] = run_interleave(tokenize, output, workers, overrides, env)
            shutil.rmtree(output)
    print(f"interleave + shards, {partition_rows:,} rows a partition{', ' if overrides else ''}{' '.join(overrides)}")
    print(f"{'rows':>10} {'workers':>8} {'wall s':>8} {'rows s':>8} {'shards s':>9} {'samples/s':>10} "
          f"{'shard samples/s':>16} {'driver peak RSS MB':>19} {'load':>5}")
    for (rows, workers), result in results.items():
        print(f"{rows:>10,} {workers:>8} {result['wall_s']:>8.1f} {result['rows_s']:>8.1f} {result['shards_s']:>9.1f} "
              f"{result['samples'] / result['wall_s']:>10,.0f} {result['samples'] / result['shards_s']:>16,.0f} "
              f"{result['rss_mb']:>19.0f} {result['load']:>5.1f}")
    smallest, largest = min(sizes), max(sizes)
    for workers in (1, 2):
        ratio = results[largest, workers]["rss_mb"] / results[smallest, workers]["rss_mb"]
        print(f"driver peak RSS, {largest:,} / {smallest:,} rows, {workers} worker{'s' * (workers > 1)}: {ratio:.2f}x (target <= 1.2x)")
    one, two = results[largest, 1], results[largest, 2]
    print(f"2 workers / 1 at {largest:,} rows: shards {one['shards_s'] / two['shards_s']:.2f}x (target >= 1.5x), "
          f"whole run {one['wall_s'] / two['wall_s']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=21, help="repeat the 24-utterance sample this many times")
    parser.add_argument("--per-tar", type=int, default=48)
    parser.add_argument("--skip-ingest", action="store_true", help="run only the interleave benchmark")
    parser.add_argument("--interleave-rows", default="", help="comma-separated sizes, e.g. 100000,400000,1600000")
    parser.add_argument("--partition-rows", type=int, default=10_000)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="SECTION.KEY=VALUE for the interleave runs (e.g. run.batch_rows_without_audio=64)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.interleave_rows.split(",") if size]
    if any(size % args.partition_rows for size in sizes):
        parser.error(f"each of --interleave-rows must be a multiple of --partition-rows ({args.partition_rows})")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled"}
    with tempfile.TemporaryDirectory(prefix="sylm-scale-", dir="/tmp") as scratch:
        if not args.skip_ingest:
            ingest_benchmark(args.copies, args.per_tar, env, Path(scratch))
        if sizes:
            interleave_benchmark(sizes, args.partition_rows, args.overrides, env, Path(scratch))


if __name__ == "__main__":
    main()
