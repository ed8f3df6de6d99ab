"""Tokenize throughput: the whole stage and the segmentation alone, beside the plain reference DP.

    python bench/tokenize_units.py [--copies 4] [--device cpu]

(Not bench/tokenize.py: a script of that name shadows the standard library module when run.)
    python bench/tokenize_units.py --encoder hubert-base --device cuda --copies 200 --long-minutes 10
    python bench/tokenize_units.py --encoder sylreg-base --device cuda --copies 200

Whole stage: decode, MFCC (or random weights of the real size, bf16 on GPU: HuBERT-base, 12 layers,
768 wide; or SylReg-Distill's data2vec 2.0 encoder, 4 + 7 blocks used, with its 24,576-centroid codebook),
segmentation, pooling, codebook lookup. Segmentation alone: the batched banded DP on the same
features, next to the plain full-matrix DP from the tests (on the first utterances only: it is
slow by design). `--long-minutes` also times one long utterance and reports peak GPU memory.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sylm_data import audio  # noqa: E402
from sylm_data.sample import layouts  # noqa: E402
from sylm_data.units import assign, segmentation  # noqa: E402
from sylm_data.units.encoders import FRAME_MS, SAMPLE_RATE  # noqa: E402
from sylm_data.units.kmeans import kmeans  # noqa: E402
from sylm_data.units.features import FeatureConfig  # noqa: E402
from sylm_data.units.syllables import Segmenter  # noqa: E402
from tests.random_models import SYLREG_BASE, save_random_sylreg  # noqa: E402
from tests.test_segmentation import reference_min_cut  # noqa: E402


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", choices=["mfcc", "hubert-base", "sylreg-base"], default="mfcc")
    parser.add_argument("--reference-items", type=int, default=4)
    parser.add_argument("--long-minutes", type=float, default=0)
    args = parser.parse_args()

    waves = [audio.decode(u.audio, SAMPLE_RATE).samples for u in layouts.sample_utterances()] * args.copies
    audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
    with tempfile.TemporaryDirectory() as folder:
        config = FeatureConfig(encoder="mfcc", device=args.device, batch_size=32)
        if args.encoder == "sylreg-base":
            save_random_sylreg(folder, SYLREG_BASE)
            config = FeatureConfig(encoder="sylreg", model=folder, device=args.device, batch_size=32)
        if args.encoder == "hubert-base":
            from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

            HubertModel(HubertConfig()).save_pretrained(folder)  # 12 layers, 768 wide, random weights
            Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
            config = FeatureConfig(encoder="hf", model=folder, layer=9, device=args.device, batch_size=32)
        segmenter = Segmenter(config)
        segmenter(waves[:4])  # warm-up
        synchronize(args.device)
        start = time.perf_counter()
        segmented = segmenter(waves)
        pooled = [segmenter.pool(features, ends) for features, ends in segmented]
        points = torch.cat(pooled).to(args.device)
        if args.encoder == "sylreg-base":  # the release's own codebook: 24,576 centroids -> 8,192 units
            centroids, mapping = segmenter.encoder.centroids, segmenter.encoder.mapping
        else:
            (centroids, _), mapping = kmeans(points, min(64, len(points)), iterations=5), None
        for segment_features in pooled:
            assign.assign(segment_features.to(args.device), centroids, mapping)
        synchronize(args.device)
        stage_s = time.perf_counter() - start

        features = [segmenter.encoder.encode([wave])[0].cpu().double() for wave in waves[: args.reference_items]]
        lengths = torch.tensor([len(f) for f in features])
        counts = segmentation.syllable_counts(lengths, FRAME_MS, 0.15)
        padded = torch.nn.utils.rnn.pad_sequence(features, batch_first=True).to(args.device)
        start = time.perf_counter()
        costs = segmentation.segment_costs(padded, lengths.to(args.device), 35, segmenter.affinity)
        batched = segmentation.min_cut(costs, lengths.to(args.device), counts, 3, 35)
        synchronize(args.device)
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        reference = [reference_min_cut(f.numpy(), int(k), 3, 35, segmenter.affinity) for f, k in zip(features, counts)]
        reference_s = time.perf_counter() - start
        assert batched == reference, "the batched DP disagrees with the reference"
    reference_audio_s = sum(len(w) for w in waves[: args.reference_items]) / SAMPLE_RATE
    units_per_s = sum(len(ends) for _, ends in segmented) / audio_s
    print(f"{len(waves)} utterances, {audio_s:,.0f} audio-s, encoder {args.encoder}, device {args.device}")
    print(f"{'':<46} {'wall s':>8} {'x real time':>12}")
    print(f"{'whole stage (decoded audio in)':<46} {stage_s:>8.2f} {audio_s / stage_s:>12.0f}")
    print(f"{'segmentation, batched banded DP':<46} {batched_s:>8.3f} {reference_audio_s / batched_s:>12.0f}")
    print(f"{'segmentation, plain reference DP':<46} {reference_s:>8.3f} {reference_audio_s / reference_s:>12.1f}")
    print(f"reference / batched: {reference_s / batched_s:.0f}x, same boundaries; {units_per_s:.1f} segments per second")
    if args.long_minutes:
        frames = int(args.long_minutes * 60 * 1000 / FRAME_MS)
        long_features = torch.randn(1, frames, segmenter.encoder.dims, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        costs = segmentation.segment_costs(long_features, torch.tensor([frames], device=args.device), 35,
                                           segmenter.affinity)
        segmentation.min_cut(costs, torch.tensor([frames], device=args.device),
                             segmentation.syllable_counts(torch.tensor([frames]), FRAME_MS, 0.15), 3, 35)
        synchronize(args.device)
        peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else float("nan")
        print(f"{args.long_minutes:g}-minute utterance: segmentation {time.perf_counter() - start:.2f} s, peak GPU memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
