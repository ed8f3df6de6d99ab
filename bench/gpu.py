"""One GPU check for a lent H100/H200: align, tokenize, train and synthesize with real-size random weights, one table.

    bash bench/gpu.sh                       # one GPU; meant to take 8 minutes at most
    bash bench/gpu.sh --smoke               # tiny sizes, CPU too: the script works before a GPU is lent
    bash bench/gpu.sh --only align,train    # some sections

Random weights make every output noise, so rates count the input run over (audio seconds, tokens,
units) per wall second, after a warm-up. Speech is the bundled sample's, resampled to 16 kHz and
tiled into 5-15 s clips. Train runs bench/train.py (`sylm-data train`, ZeRO-2, bf16) in its own
process. A section that fails shows its error in the table and the others still run.
"""

import argparse
import functools
import gc
import math
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]
from synthesize import spans, timed_generation  # bench/synthesize.py

from sylm_data import audio
from sylm_data.align.qwen3 import Qwen3Aligner
from sylm_data.align.words import Piece
from sylm_data.sample import layouts
from sylm_data.train import t2t
from sylm_data.units import assign
from sylm_data.units.encoders import SAMPLE_RATE
from sylm_data.units.features import FeatureConfig
from sylm_data.units.syllables import Segmenter
from tests.random_models import ALIGNER_0_6B, ALIGNER_TINY, SYLREG_BASE, SYLREG_TINY, save_random_aligner, save_random_sylreg

FULL = {"aligner": ALIGNER_0_6B, "clips": 256, "sylreg": SYLREG_BASE, "long_minutes": 10, "t2t": "t2t-base", "spans": 64,
        "train": ["--size", "qwen2.5-0.5b", "--seq-len", "2048", "--micro-batch", "8", "--steps", "30"]}
SMOKE = {"aligner": ALIGNER_TINY, "clips": 16, "sylreg": SYLREG_TINY, "long_minutes": 0.5, "t2t": "t2t-tiny", "spans": 32,
         "train": ["--size", "tiny", "--seq-len", "128", "--micro-batch", "2", "--steps", "4", "--warmup", "2", "--workers", "1"]}
TARGETS = {"align": (2000, "≥ 2,000× real time"), "tokenize": (5000, "≥ 5,000× real time"), "train": (0.40, "MFU ≥ 40%")}


@functools.cache
def sample_speech() -> list[tuple[np.ndarray, str]]:
    return [(audio.decode(u.audio, SAMPLE_RATE).samples, u.text) for u in layouts.sample_utterances()]


def clips(seconds: list[float]) -> list[tuple[np.ndarray, str]]:
    """(16 kHz samples, transcript) of at least each length, the sample's utterances one after another."""
    utterances, cursor, out = sample_speech(), 0, []
    for length in seconds:
        waves, texts = [], []
        while sum(map(len, waves)) < length * SAMPLE_RATE:
            wave, text = utterances[cursor % len(utterances)]
            waves, texts, cursor = waves + [wave], texts + [text], cursor + 1
        out.append((np.concatenate(waves), " ".join(texts)))
    return out


def spread(count: int) -> list[float]:
    return [5 + 10 * index / max(count - 1, 1) for index in range(count)]  # 5-15 s


def timed(device: str, work):
    """(seconds, peak GPU memory text, result) of `work()`."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = work()
    if device == "cuda":
        torch.cuda.synchronize()
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB" if device == "cuda" else "n/a"
    return time.perf_counter() - start, peak, result


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def align_section(sizes: dict, device: str, folder: Path) -> list[tuple]:
    save_random_aligner(folder, sizes["aligner"])
    aligner = Qwen3Aligner(str(folder), device)
    pieces = [Piece(wave, aligner.words(text, "en"), "en", 0) for wave, text in clips(spread(sizes["clips"]))]
    audio_s = sum(len(piece.samples) for piece in pieces) / SAMPLE_RATE
    rows = []
    for batch in (1, 8, 32):
        aligner.batch_size = batch
        aligner.align(pieces[:batch])  # warm-up
        seconds, peak, _ = timed(device, lambda: aligner.align(pieces))
        rows.append((f"Qwen3 aligner {dtype_name(aligner.dtype)}, {len(pieces)} clips ({audio_s:,.0f} s), batch {batch}",
                     f"{audio_s / seconds:,.0f}× real time", audio_s / seconds, peak))
    return rows


def tokenize_section(sizes: dict, device: str, folder: Path) -> list[tuple]:
    save_random_sylreg(folder, sizes["sylreg"])
    config = FeatureConfig(encoder="sylreg", model=str(folder), device=device, batch_size=32)
    segmenter = Segmenter(config)

    def tokenize(waves: list[np.ndarray]) -> None:  # encoder, DP, merging, pooling, codebook lookup
        for features, ends in segmenter(waves):
            assign.assign(segmenter.pool(features, ends).to(device), segmenter.encoder.centroids, segmenter.encoder.mapping)

    waves = [wave for wave, _ in clips(spread(sizes["clips"]))]
    audio_s = sum(map(len, waves)) / SAMPLE_RATE
    tokenize(waves[:4])  # warm-up
    setting = f"SylReg {dtype_name(segmenter.encoder.dtype)} + DP {config.dp_dtype}"
    seconds, peak, _ = timed(device, lambda: tokenize(waves))
    rows = [(f"{setting}, {len(waves)} clips ({audio_s:,.0f} s), batch 32", f"{audio_s / seconds:,.0f}× real time",
             audio_s / seconds, peak)]
    minutes = sizes["long_minutes"]
    long_wave = clips([minutes * 60])[0][0][: int(minutes * 60 * SAMPLE_RATE)]
    seconds, peak, _ = timed(device, lambda: tokenize([long_wave]))
    rows.append((f"{setting}, one {minutes:g}-minute clip", f"{minutes * 60 / seconds:,.0f}× real time", None, peak))
    return rows


def train_section(sizes: dict, device: str, folder: Path) -> list[tuple]:
    done = subprocess.run([sys.executable, str(BENCH / "train.py"), *sizes["train"]], capture_output=True, text=True,
                          check=False, timeout=360)
    if done.returncode:
        raise RuntimeError(f"bench/train.py exited {done.returncode}: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    setting = re.search(r"^\S+, seq .*$", done.stdout, re.MULTILINE).group(0).split(";")[0]
    rows = []
    for name, label in (("trainer (sylm-data train)", "sylm-data train"), ("floor: bare loop, random tokens", "bare loop (floor)")):
        rate, mfu = re.search(re.escape(name) + r"\s+([\d,.]+)\s+(\S+)", done.stdout).groups()
        value = float(mfu.rstrip("%")) / 100 if mfu.endswith("%") else float("nan")  # n/a: no known peak (CPU)
        rows.append((f"{label}: {setting}", f"{rate} tokens/s, MFU {mfu}", value if label == "sylm-data train" else None, ""))
    return rows


def synthesize_section(sizes: dict, device: str, folder: Path) -> list[tuple]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    model = t2t.new_model(sizes["t2t"], 8192).to(device, dtype).eval()
    texts = spans(sizes["spans"])
    timed_generation(model, texts[:32], 32)  # warm-up
    rows = []
    for batch in (1, 32):
        seconds, peak, (_, units) = timed(device, lambda batch=batch: timed_generation(model, texts, batch))
        rows.append((f"{sizes['t2t']} {dtype_name(dtype)}, {len(texts)} spans, batch {batch}", f"{units / seconds:,.0f} units/s",
                     None, peak))
    return rows


SECTIONS = {"align": align_section, "tokenize": tokenize_section, "train": train_section, "synthesize": synthesize_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a couple of minutes, CPU is fine")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit("bench/gpu.py: no CUDA GPU here; `bash bench/gpu.sh --smoke` checks the script on CPU")
    from transformers.utils import logging

    logging.disable_progress_bar()
    device, sizes = ("cuda" if cuda else "cpu"), (SMOKE if args.smoke else FULL)
    table, started = [], time.perf_counter()
    for name in args.only.split(","):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            try:
                rows = SECTIONS[name](sizes, device, Path(folder))
            except Exception as error:  # noqa: BLE001 — one section's failure is a row of the table; the others still run
                traceback.print_exc()
                rows = [("ERROR", f"{type(error).__name__}: {(str(error).strip() or '-').splitlines()[0][:150]}", None, "")]
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        seconds = time.perf_counter() - start
        print(f"[gpu.py] {name}: {seconds:.0f} s", file=sys.stderr, flush=True)
        threshold, target = TARGETS.get(name, (None, ""))
        for index, (case, measured, value, peak) in enumerate(rows):  # value: what the target is checked on, or None
            verdict = "" if value is None or threshold is None or args.smoke or math.isnan(value) else (
                "met" if value >= threshold else "BELOW")
            table.append((name if index == 0 else "", case, measured, peak, "" if value is None else target, verdict,
                          f"{seconds:.0f}" if index == 0 else ""))

    where = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\nbench/gpu.py{' --smoke (tiny sizes; targets do not apply)' if args.smoke else ''}: {where}, "
          f"torch {torch.__version__}, {time.perf_counter() - started:.0f} s in all")
    header = ("section", "case", "measured", "peak GPU mem", "target", "", "wall s")
    widths = [max(len(row[column]) for row in [header, *table]) for column in range(len(header))]
    for row in [header, *table]:
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths)).rstrip())

if __name__ == "__main__":
    main()
