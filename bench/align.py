"""Alignment throughput (audio-seconds per wall-second) per backend, side by side in one run.

    python bench/align.py                                  # pocketsphinx + a tiny random qwen3, CPU
    python bench/align.py --qwen3-size 0.6b --device cuda --batch-sizes 1,8,32 --copies 20

The qwen3 model is randomly initialised (weights cannot be downloaded here): with `--qwen3-size
0.6b` it has Qwen3-ForcedAligner-0.6B's dimensions, so its speed is the real model's. Its timings
are noise, so its rows end as rejects; throughput counts the audio the model ran over.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sylm_data.pipeline.partitions import read_source_partition  # noqa: E402
from sylm_data.sample import MANIFEST  # noqa: E402
from sylm_data.sources import READERS  # noqa: E402
from sylm_data.stages import align, ingest  # noqa: E402
from tests.random_models import ALIGNER_0_6B, ALIGNER_TINY, save_random_aligner  # noqa: E402


def utterances(copies: int) -> pa.Table:
    partition = READERS["manifest"].partitions([str(MANIFEST)])[0]
    table = pa.concat_tables([ingest.transform(b, ingest.IngestConfig()) for b in read_source_partition(partition, "ingest", 64)])
    return pa.concat_tables([table] * copies)


def timed(aligner: align.Aligner, table: pa.Table) -> tuple[float, int]:
    aligner(table.slice(0, min(4, table.num_rows)))  # warm-up: kernels, caches
    start = time.perf_counter()
    out = aligner(table)
    if aligner.backend.__class__.__name__ == "Qwen3Aligner" and aligner.backend.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - start, out["reject_reason"].null_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="the 24-utterance sample repeated")
    parser.add_argument("--qwen3-size", choices=["tiny", "0.6b"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--skip-pocketsphinx", action="store_true")
    args = parser.parse_args()

    table = utterances(args.copies)
    audio_s = sum(table["duration_ms"].to_pylist()) / 1000
    rows = []
    if not args.skip_pocketsphinx:
        seconds, aligned = timed(align.Aligner(align.AlignConfig(backend="pocketsphinx")), table)
        rows.append(("pocketsphinx, 1 CPU process", seconds, aligned))
    with tempfile.TemporaryDirectory() as folder:
        save_random_aligner(folder, ALIGNER_0_6B if args.qwen3_size == "0.6b" else ALIGNER_TINY)
        for batch_size in map(int, args.batch_sizes.split(",")):
            config = align.AlignConfig(backend="qwen3", model=folder, device=args.device, batch_size=batch_size)
            seconds, aligned = timed(align.Aligner(config), table)
            rows.append((f"qwen3 {args.qwen3_size} (random), {args.device}, batch {batch_size}", seconds, aligned))
    print(f"{table.num_rows} utterances, {audio_s:,.0f} audio-s")
    print(f"{'backend':<44} {'wall s':>8} {'x real time':>12} {'aligned':>8}")
    for name, seconds, aligned in rows:
        print(f"{name:<44} {seconds:>8.2f} {audio_s / seconds:>12.0f} {aligned:>8}")


if __name__ == "__main__":
    main()
