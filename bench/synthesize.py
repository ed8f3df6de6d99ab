"""Text-to-token generation throughput at several batch sizes, side by side in one run.

    python bench/synthesize.py                                  # t2t-tiny on CPU
    python bench/synthesize.py --preset t2t-base --device cuda --batch-sizes 1,32,128,512

The model has random weights of the preset's size (bf16 on GPU), so it rarely stops early: every
span runs to its bound (words × max units per word), the worst case. Spans of Poisson(10) words
from synthetic text, as synthesize makes them. Then the synthesize stage's transform on documents
at the largest batch size, against generation alone.
"""

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from sylm_data.schemas import source_record, stream
from sylm_data.stages import synthesize
from sylm_data.train import t2t

WORDS = "the river ran past the old mill before it reached the sea while a boy watched the fish".split()
MAX_UNITS_PER_WORD = 2.5


def spans(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(random.Random(n).choices(WORDS, k=max(1, int(rng.poisson(10))))) for n in range(count)]


def timed_generation(model, texts: list[str], batch: int) -> tuple[float, int]:
    limits = [math.ceil(len(text.split()) * MAX_UNITS_PER_WORD) for text in texts]
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    units = 0
    for first in range(0, len(texts), batch):
        units += sum(map(len, t2t.generate(model, texts[first : first + batch], limits[first : first + batch])))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(t2t.PRESETS), default="t2t-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--spans", type=int, default=64)
    parser.add_argument("--units", type=int, default=8192)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    model = t2t.new_model(args.preset, args.units).to(args.device, dtype).eval()
    texts = spans(args.spans)
    words = sum(len(text.split()) for text in texts)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset} ({params / 1e6:.0f}M parameters, random), {args.device} {dtype}; {len(texts)} spans, {words} words")
    print(f"{'':<28}{'spans/s':>10}{'units/s':>10}{'words/s':>10}{'x batch 1':>11}")
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    timed_generation(model, texts[: sizes[-1]], sizes[-1])  # warm up
    first_rate = None
    for size in sizes:
        seconds, units = timed_generation(model, texts, size)
        first_rate = first_rate or len(texts) / seconds
        print(f"{'generate, batch ' + str(size):<28}{len(texts) / seconds:>10,.1f}{units / seconds:>10,.0f}"
              f"{words / seconds:>10,.0f}{len(texts) / seconds / first_rate:>11.2f}")

    with tempfile.TemporaryDirectory() as scratch:
        model.to(torch.float32).save_pretrained(scratch)
        t2t.save_meta(Path(scratch), args.units, f"bench:0:k{args.units}:u{args.units}:0", MAX_UNITS_PER_WORD, "bench")
        config = synthesize.SynthesizeConfig(model=scratch, device=args.device, generate_batch=sizes[-1], min_words=1)
        stage = synthesize.Synthesizer(config)
        documents = [" ".join(random.Random(n).choices(WORDS, k=100)) + "." for n in range(max(len(texts) // 3, 1))]
        batch = pa.Table.from_pylist([{source_record.ID: f"text:{n}", source_record.SOURCE: "text", source_record.TEXT: text,
                                       source_record.LANGUAGE: "en", stream.PARTITION: "p", stream.PARTITION_TOTAL: 0,
                                       stream.REJECT_STAGE: None, stream.REJECT_REASON: None, stream.REJECT_DETAIL: None}
                                      for n, text in enumerate(documents)])
        start = time.perf_counter()
        out = stage(batch).to_pylist()
        seconds = time.perf_counter() - start
    spoken = sum(row["speech_words"] for row in out)
    units = sum(row["units"] for row in out)
    print(f"{'synthesize stage, batch ' + str(sizes[-1]):<28}{'':>10}{units / seconds:>10,.0f}{spoken / seconds:>10,.0f}"
          f"   ({len(out)} documents, {sum(row['words'] for row in out) / seconds:,.0f} corpus words/s; "
          f"speech share {spoken / sum(row['words'] for row in out):.2f})")
    print(json.dumps({"sample": json.loads(out[0]["json"])["segments"][:2]})[:200])


if __name__ == "__main__":
    main()
