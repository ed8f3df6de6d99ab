"""Trainer throughput and MFU against a bare training loop, side by side in one run.

    python bench/train.py                                   # tiny model, CPU-sized
    python bench/train.py --size qwen2.5-0.5b --seq-len 2048 --micro-batch 8 --steps 30   # on a GPU

Trainer: `sylm-data train` itself (DeepSpeed ZeRO stage `--zero`, bf16 on GPU, the shard loader
with its workers, packing, logging) on synthetic interleaved shards. Floor: the same extended
model, a plain loop of forward, backward and torch AdamW on random token batches of the same
shape, with no DeepSpeed and no data loading. Both time the steps after `--warmup` steps.
The model is randomly initialised from the named dimensions (Qwen2.5-0.5B's config on the hub).
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sylm_data.pipeline.shards import ShardWriter  # noqa: E402
from sylm_data.train import config as train_config  # noqa: E402
from sylm_data.train import loop, metrics  # noqa: E402
from tests.random_models import LM_TINY, QWEN2_5_0_5B, save_random_lm  # noqa: E402

SIZES = {"tiny": LM_TINY, "small": LM_TINY | dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=4096),
         "qwen2.5-0.5b": QWEN2_5_0_5B}
WORDS = "the river ran past the old mill before it reached the sea while a boy watched the fish".split()
UNITS = 8192


def synthetic_shards(folder: Path, samples: int) -> None:
    rng = random.Random(0)
    with ShardWriter(folder, extra_index={"tokenizer": f"bench:0:k{UNITS}:u{UNITS}:0", "unit_vocab": UNITS}) as writer:
        for index in range(samples):
            segments = []
            for _ in range(rng.randint(3, 12)):
                if rng.random() < 0.3:
                    segments.append({"modality": "speech", "units": [rng.randrange(UNITS) for _ in range(rng.randint(4, 40))]})
                else:
                    segments.append({"modality": "text", "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 15)))})
            document = {"segments": segments, "kind": "interleaved", "language": "en", "source_id": f"bench:{index}"}
            writer.write(f"bench-{index:07d}", {"json": json.dumps(document).encode()})


def floor_tokens_per_s(model_folder: Path, args, steps: int) -> float:
    """Forward, backward and AdamW on random tokens: what the hardware gives without the trainer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sylm_data.train.vocab import extend

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_folder, attn_implementation=args.attention)
    extend(model, AutoTokenizer.from_pretrained(model_folder), UNITS)
    model = model.to("cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda or None)
    shape = (args.micro_batch, args.seq_len)
    batch = torch.randint(0, model.config.vocab_size, shape, device=model.device)
    for step in range(args.warmup + steps):
        if step == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return shape[0] * shape[1] * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="for MFU where the GPU is not known (or on CPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        save_random_lm(scratch / "model", SIZES[args.size], corpus=[" ".join(WORDS)] * 5)
        synthetic_shards(scratch / "shards", 2000)
        total = args.warmup + args.steps
        config = train_config.load(None, [
            f"model.name='{scratch / 'model'}'", f"model.attention='{args.attention}'", f"data.shards=['{scratch / 'shards'}']",
            f"data.seq_len={args.seq_len}", f"data.micro_batch={args.micro_batch}", f"data.workers={args.workers}",
            f"optim.steps={total}", "optim.warmup_steps=1", f"optim.zero_stage={args.zero}",
            f"run.output='{scratch / 'run'}'", f"run.log_every={args.warmup}", f"run.save_every={10 * total}",
            "run.progress=false", f"run.peak_tflops={args.peak_tflops}"])
        loop.train(config, echo=print)
        logged = [json.loads(line) for line in (scratch / "run" / "metrics.jsonl").read_text().splitlines()]
        trainer = sum(entry["tokens_per_s"] for entry in logged[1:]) / len(logged[1:])  # windows after the first
        floor = floor_tokens_per_s(scratch / "model", args, args.steps)

        from transformers import AutoModelForCausalLM

        flops = metrics.flops_per_token(AutoModelForCausalLM.from_pretrained(scratch / "run" / "final"), args.seq_len)
    peak = metrics.peak_flops(args.peak_tflops)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\n{args.size}, seq {args.seq_len} × micro-batch {args.micro_batch}, ZeRO-{args.zero}, {device}; "
          f"{flops / 1e9:.2f} GFLOP per token")
    print(f"{'':<34}{'tokens/s':>12}{'MFU':>8}{'x floor':>9}")
    for name, rate in (("trainer (sylm-data train)", trainer), ("floor: bare loop, random tokens", floor)):
        mfu = f"{flops * rate / peak:.1%}" if peak else "n/a"
        print(f"{name:<34}{rate:>12,.0f}{mfu:>8}{rate / floor:>9.2f}")


if __name__ == "__main__":
    main()
