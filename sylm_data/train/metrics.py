"""What a run reports: loss, learning rate, tokens/s and MFU, and what the data did (samples skipped;
tokens padded, documents split and segments cut inside by the packer, all cumulative), to a JSONL
file (and TensorBoard).

MFU counts model FLOPs as PaLM does (appendix B): 6 per parameter and token for the matmuls
(the output projection included, embedding lookups not) plus 12 · layers · width · sequence for
attention, against the accelerator's dense bf16 peak.
"""

import json
import time
from pathlib import Path

import torch

# dense bf16 peak FLOP/s by GPU name (no sparsity); the first matching entry wins
PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("GH200", 989e12), ("H200", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12),
)


def peak_flops(configured_tflops: float) -> float | None:
    """The peak to measure MFU against: configured, else looked up for the GPU; None on CPU or an unknown GPU."""
    if configured_tflops:
        return configured_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def flops_per_token(model, seq_len: int) -> float:
    config = model.config.get_text_config()
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    matmul_params = sum(p.numel() for p in model.parameters()) - embedding.numel()
    if output is not None and output.weight is embedding:  # tied: the projection still runs
        matmul_params += embedding.numel()
    return 6 * matmul_params + 12 * config.num_hidden_layers * config.hidden_size * seq_len


class MetricsLog:
    """Rank 0's log: one JSON object per logged step, plus TensorBoard scalars when asked."""

    def __init__(self, folder: Path, tensorboard: bool, after_step: int) -> None:
        """Lines of steps after `after_step` (the checkpoint a run resumes from) are dropped: the
        resumed run logs them again."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "metrics.jsonl"
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= after_step] if after_step and path.exists() else []
        self.file = open(path, "w")
        self.file.writelines(line + "\n" for line in kept)
        self.board = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("run.tensorboard needs the tensorboard package: pip install 'sylm-data[tensorboard]'") from None
            self.board = SummaryWriter(str(folder / "tensorboard"))

    def write(self, step: int, values: dict) -> None:
        self.file.write(json.dumps({"step": step, "time": round(time.time(), 3)} | values) + "\n")
        self.file.flush()
        if self.board is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.board.add_scalar(name, value, step)

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()
