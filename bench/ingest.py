"""Ingest throughput against the decode floor, side by side in one run.

    python bench/ingest.py [--copies 84] [--per-tar 96] [--cpus 2]

Corpus: the bundled sample repeated into >= 2,000 utterances in Emilia tars. Floor: the same audio
decoded (and resampled to 16 kHz) in a plain loop — no Ray, no Parquet, one process. The stage
runs on an embedded Ray with `--cpus` workers, twice into fresh output folders: the first run pays
for starting worker processes and their imports (cold), the second shows the steady state (warm).
Ray's own start-up is reported apart.
"""

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from sylm_data import audio
from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import runner
from sylm_data.sample import layouts


def decode_floor(tars: list[Path], resample_to: int | None) -> tuple[float, float]:
    """(wall seconds, audio seconds) to decode every mp3 of the tars in a plain loop."""
    start, audio_s = time.perf_counter(), 0.0
    for path in tars:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.name.endswith(".mp3"):
                    decoded = audio.decode(archive.extractfile(member).read(), resample_to)
                    audio_s += len(decoded.samples) / decoded.sample_rate
    return time.perf_counter() - start, audio_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=84, help="repeat the 24-utterance sample this many times")
    parser.add_argument("--per-tar", type=int, default=96)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tars = layouts.write_emilia(scratch / "corpus", layouts.sample_utterances() * args.copies, shard_size=args.per_tar)
        n_utterances = 24 * args.copies

        floor_s, audio_s = decode_floor(tars, resample_to=16_000)
        decode_only_s, _ = decode_floor(tars, resample_to=None)

        cfg = config_module.load(None, [f"run.num_cpus={args.cpus}"])
        cfg.stages["ingest"].source = "emilia"
        cfg.stages["ingest"].inputs = [str(t) for t in tars]
        cold_start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
        ray_start_s = time.perf_counter() - cold_start
        timings = []
        for attempt in ("cold", "warm"):
            start = time.perf_counter()
            result = runner.run(cfg, ["ingest"], str(scratch / attempt), log=lambda line: None)
            timings.append(time.perf_counter() - start)
        cold_s, stage_s = timings
        ray.shutdown()

    counts = result.record["this_run"][0]
    assert counts["out"] == n_utterances, counts
    rows = [
        ("decode + resample 16 kHz, plain loop (floor)", floor_s),
        ("decode only, plain loop", decode_only_s),
        (f"ingest stage, {args.cpus} CPUs, warm workers", stage_s),
        (f"ingest stage, {args.cpus} CPUs, cold workers", cold_s),
        ("ingest stage, cold, + Ray start-up", cold_s + ray_start_s),
    ]
    print(f"corpus: {n_utterances} utterances, {audio_s:,.0f} audio-s, {len(tars)} tars")
    print(f"{'':<46} {'wall s':>8} {'audio-s/s':>10} {'x floor':>8}")
    for name, seconds in rows:
        print(f"{name:<46} {seconds:>8.2f} {audio_s / seconds:>10.0f} {seconds / floor_s:>8.2f}")
    print(json.dumps({"utterances": n_utterances, "audio_s": round(audio_s, 1), "floor_s": round(floor_s, 3),
                      "decode_only_s": round(decode_only_s, 3), "stage_s": round(stage_s, 3), "cold_stage_s": round(cold_s, 3),
                      "ray_start_s": round(ray_start_s, 3), "stage_over_floor": round(stage_s / floor_s, 3)}))


if __name__ == "__main__":
    sys.exit(main())
