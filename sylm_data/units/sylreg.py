"""The SylReg-Distill tokenizer (`ryota-komatsu/SylReg-Distill`) loaded with this project's own model code.

The checkpoint is a transformers-format folder (config.json + weights) whose state dict holds the
speech encoder under `model.*` and the released codebook beside it: `quantizer1` (K-means
centroids, 24,576 × hidden) and `quantizer2` (each centroid's unit after agglomerative clustering,
into 8,192 units). Two encoder layouts are read:

- data2vec 2.0 audio (config with `modalities.audio`; the distilled model): a CNN feature encoder
  with per-layer LayerNorm, a projection, a stack of grouped positional convolutions, `prenet_depth`
  post-norm transformer blocks, then `depth` more, all with ALiBi attention biases. Layer i is the
  output of main block i (0-based), as the release indexes it.
- HuBERT (`model_type: hubert`): transformers' own HubertModel; layer i is its hidden state i.

Released settings: layer 6, 0.15 s per syllable, segments of 3–35 frames, neighbours merged while
their cosine similarity is ≥ 0.95 (never below two segments), the shifted dot-product affinity,
nearest centroid (L2) to each segment's mean feature standardized over its dims, then the map. The
encoder runs in the checkpoint's dtype (float32) unless bfloat16 is asked for. Batches give the same
features as one utterance at a time: padded frames are zeroed before every positional convolution
and masked as keys.
"""

import ast
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sylm_data import offline
from sylm_data.schemas.tokenized import tokenizer_id
from sylm_data.units.features import SYLREG_DTYPES

HUB_ID = "ryota-komatsu/SylReg-Distill"
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PREFIX = "model."
CENTROIDS, MAPPING = "quantizer1", "quantizer2"
LAYER = 6
MERGE_THRESHOLD = 0.95
KEEP_SEGMENTS = 2


class CheckpointError(ValueError):
    pass


def _local_or_hub(model: str, filename: str) -> Path:
    if Path(model).is_dir():
        path = Path(model) / filename
        if not path.exists():
            raise CheckpointError(f"{model} has no {filename}")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(hf_hub_download(model, filename, local_files_only=offline.hub_offline()))
    except (OSError, HFValidationError) as error:  # hub errors are OSErrors; offline or missing alike
        raise CheckpointError(f"cannot fetch {filename} of {model}: {offline.reason(error, model)}") from None


def read_config(model: str) -> dict:
    config = json.loads(_local_or_hub(model, CONFIG_FILE).read_text())
    if "modalities" not in config and config.get("model_type") != "hubert":
        raise CheckpointError(f"{model}: config.json is neither a data2vec 2.0 audio nor a HuBERT encoder")
    return config


def layer_count(config: dict) -> int:
    """Valid layer indices are 0..layer_count - 1."""
    if "modalities" in config:
        return int(config["depth"])
    return int(config["num_hidden_layers"]) + 1


def read_state_dict(model: str) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        try:
            path = _local_or_hub(model, name)
        except CheckpointError:
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{model} has none of {', '.join(WEIGHT_FILES)}")


def conv_spec(text: str) -> list[tuple[int, int, int]]:
    """The feature encoder spec, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", read without eval."""

    def value(node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise CheckpointError(f"unsupported feature_encoder_spec {text!r}")

    return [tuple(layer) for layer in value(ast.parse(text, mode="eval").body)]


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class _ConvFeatures(nn.Module):
    """Waveform (B, S) -> (B, C, frames). `layer_norm` mode normalises every layer over channels;
    `default` mode group-normalises the first layer only."""

    def __init__(self, spec: list[tuple[int, int, int]], mode: str) -> None:
        super().__init__()
        if mode not in ("layer_norm", "default"):
            raise CheckpointError(f"unsupported extractor_mode {mode!r}")
        self.spec = spec
        layers, channels = [], 1
        for index, (dims, kernel, stride) in enumerate(spec):
            parts = [nn.Conv1d(channels, dims, kernel, stride, bias=False), nn.Dropout(0.0)]
            if mode == "layer_norm":
                parts.append(nn.Sequential(_Transpose(), nn.LayerNorm(dims), _Transpose()))
            elif index == 0:
                parts.append(nn.GroupNorm(dims, dims))
            layers.append(nn.Sequential(*parts, nn.GELU()))
            channels = dims
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = waves[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        for _, kernel, stride in self.spec:
            samples = torch.div(samples - kernel, stride, rounding_mode="floor") + 1
        return samples.clamp_min(0)


class _Attention(nn.Module):
    def __init__(self, dims: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dims, dims * 3)
        self.proj = nn.Linear(dims, dims)

    def forward(self, x: torch.Tensor, bias, query_rows: int = 2048) -> torch.Tensor:
        """`bias(rows)` gives the attention bias (B, H, rows, T) of a block of query rows: ALiBi plus key
        padding. Building it a block at a time keeps long utterances from needing a T×T×heads tensor."""
        batch, frames, dims = x.shape
        q, k, v = self.qkv(x).reshape(batch, frames, 3, self.heads, dims // self.heads).permute(2, 0, 3, 1, 4)
        out = []
        for start in range(0, frames, query_rows):
            rows = slice(start, min(start + query_rows, frames))
            out.append(nn.functional.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=bias(rows).to(q.dtype)))
        return self.proj(torch.cat(out, dim=2).transpose(1, 2).reshape(batch, frames, dims))


class _Mlp(nn.Module):
    def __init__(self, dims: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dims, hidden), nn.Linear(hidden, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Post-norm transformer block."""

    def __init__(self, dims: int, heads: int, mlp_ratio: float, eps: float, affine: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dims, eps=eps, elementwise_affine=affine)
        self.attn = _Attention(dims, heads)
        self.norm2 = nn.LayerNorm(dims, eps=eps, elementwise_affine=affine)
        self.mlp = _Mlp(dims, int(dims * mlp_ratio))

    def forward(self, x: torch.Tensor, bias) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.mlp(x))


class _BlockStack(nn.Module):
    def __init__(self, blocks: list[_Block], norm: nn.LayerNorm) -> None:
        super().__init__()
        self.blocks, self.norm = nn.ModuleList(blocks), norm


def alibi_slopes(heads: int) -> list[float]:
    """Geometric slopes per head; for a head count that is not a power of two, the power of two
    below it plus every other slope of the next power of two."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    below = 2 ** math.floor(math.log2(heads))
    return power_of_two(below) + alibi_slopes(2 * below)[0::2][: heads - below]


class _AudioEncoder(nn.Module):
    def __init__(self, config: dict, make_block) -> None:
        super().__init__()
        audio = config["modalities"]["audio"]
        dims = int(config["embed_dim"])
        spec = conv_spec(audio["feature_encoder_spec"])
        self.local_encoder = _ConvFeatures(spec, audio.get("extractor_mode", "layer_norm"))
        self.project_features = nn.Sequential(_Transpose(), nn.LayerNorm(spec[-1][0]), nn.Linear(spec[-1][0], dims))
        depth = int(audio["conv_pos_depth"])
        kernel = max(3, int(audio["conv_pos_width"]) // depth)
        self.positional_kernel = kernel
        self.relative_positional_encoder = nn.Sequential(_Transpose(), *[
            nn.Sequential(nn.Conv1d(dims, dims, kernel, padding=kernel // 2, groups=int(audio["conv_pos_groups"])),
                          nn.Identity(), _Transpose(), nn.LayerNorm(dims, elementwise_affine=False), _Transpose(),
                          nn.GELU())
            for _ in range(depth)
        ], _Transpose())
        eps, affine = float(config.get("norm_eps", 1e-5)), bool(config.get("norm_affine", True))
        self.context_encoder = _BlockStack([make_block() for _ in range(int(audio["prenet_depth"]))],
                                           nn.LayerNorm(dims, eps=eps, elementwise_affine=affine))
        self.use_alibi = bool(audio.get("use_alibi_encoder", True))
        self.alibi_scale = nn.Parameter(torch.ones(1, 1, int(audio.get("num_alibi_heads", config["num_heads"])), 1, 1),
                                        requires_grad=False)

    def positions(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The positional convolutions over (B, T, D), padding zeroed before each so a batch matches single items."""
        mask = valid[:, None, :].to(x.dtype)
        y = x.transpose(1, 2)
        for layer in list(self.relative_positional_encoder)[1:-1]:
            conv = layer[0]
            y = conv(y * mask)
            if self.positional_kernel % 2 == 0:  # an even kernel with k // 2 padding yields one extra frame
                y = y[..., :-1]
            y = nn.functional.gelu(nn.functional.layer_norm(y.transpose(1, 2), (y.shape[1],)).transpose(1, 2))
        return y.transpose(1, 2)


class Data2VecAudio(nn.Module):
    """data2vec 2.0 audio encoder; parameter names follow the released state dict (under `model.`)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        dims, heads = int(config["embed_dim"]), int(config["num_heads"])
        eps, affine = float(config.get("norm_eps", 1e-5)), bool(config.get("norm_affine", True))

        def make_block() -> _Block:
            return _Block(dims, heads, float(config.get("mlp_ratio", 4.0)), eps, affine)

        self.modality_encoders = nn.ModuleDict({"AUDIO": _AudioEncoder(config, make_block)})
        self.blocks = nn.ModuleList(make_block() for _ in range(int(config["depth"])))
        self.heads = heads

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        return self.modality_encoders["AUDIO"].local_encoder.frames(samples)

    def forward(self, waves: torch.Tensor, samples: torch.Tensor, last_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs of main block `last_layer` (B, T, D), frame counts (B,)) for zero-padded waves (B, S)."""
        audio = self.modality_encoders["AUDIO"]
        x = audio.project_features(audio.local_encoder(waves))
        lengths = self.frames(samples).clamp(max=x.shape[1])
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        x = x + audio.positions(x, valid)
        scales = audio.alibi_scale.clamp_min(0)
        positions = torch.arange(x.shape[1], device=x.device)
        slopes = torch.tensor(alibi_slopes(scales.shape[2]), device=x.device)
        key_padding = torch.where(valid, 0.0, -math.inf)[:, None, None, :]  # (B, 1, 1, T)

        def bias_of(index: int):
            scale = scales[index if scales.shape[0] > 1 else 0, 0, :, 0, 0]  # (H,)

            def bias(rows: slice) -> torch.Tensor:
                distance = -(positions[None, :] - positions[rows, None]).abs().float()  # (rows, T), never T×T
                alibi = (slopes * scale)[:, None, None] * distance[None] if audio.use_alibi else 0.0
                return alibi + key_padding
            return bias

        x = audio.context_encoder.norm(x)
        for index, block in enumerate(audio.context_encoder.blocks):
            x = block(x, bias_of(index))
        prenet = len(audio.context_encoder.blocks)
        for index, block in enumerate(self.blocks[: last_layer + 1]):
            x = block(x, bias_of(prenet + index))
        return x, lengths


# "auto": the checkpoint's own dtype
DTYPES = {name: None if name == "auto" else getattr(torch, name) for name in SYLREG_DTYPES}


def checkpoint_dtype(config: dict, state: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype a checkpoint was saved in: its config's `torch_dtype` (`dtype` in newer transformers),
    else that of its first floating-point encoder weight."""
    name = config.get("torch_dtype") or config.get("dtype")
    if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return next(tensor.dtype for key, tensor in state.items() if key.startswith(PREFIX) and tensor.is_floating_point())


class SylRegEncoder:
    """Frame features of the release's segmentation layer plus its codebook, as the encoders of
    `encoders.py`: `encode(waves)` takes 16 kHz float32 audio and returns (frames, dims) per item."""

    def __init__(self, model: str, layer: int, device: str = "cpu", dtype: str = "auto") -> None:
        """`dtype`: "auto" runs the encoder in the checkpoint's own dtype (float32 for the release), the
        one its units were made in; "bfloat16" is faster on GPUs but changes some units."""
        config = read_config(model)
        if not 0 <= layer < layer_count(config):
            raise CheckpointError(f"{model} has layers 0..{layer_count(config) - 1}, not {layer}")
        if dtype not in DTYPES:
            raise CheckpointError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        self.device = torch.device(device)
        state = read_state_dict(model)
        self.dtype = checkpoint_dtype(config, state) if dtype == "auto" else DTYPES[dtype]
        missing = [name for name in (CENTROIDS, MAPPING) if name not in state]
        if missing:
            raise CheckpointError(f"{model} lacks the codebook ({', '.join(missing)})")
        self.centroids = state.pop(CENTROIDS).float().to(self.device)
        self.mapping = state.pop(MAPPING).long().to(self.device)
        self.data2vec = "modalities" in config
        if self.data2vec:
            network = Data2VecAudio(config)
        else:
            from transformers import HubertConfig, HubertModel

            network = HubertModel(HubertConfig.from_dict(config))
        weights = {name.removeprefix(PREFIX): tensor for name, tensor in state.items() if name.startswith(PREFIX)}
        unknown = sorted(set(state) - {PREFIX + name for name in weights})
        if unknown:
            raise CheckpointError(f"{model}: unexpected weights {unknown[:3]}")
        scale_name = "modality_encoders.AUDIO.alibi_scale"
        if self.data2vec and scale_name in weights:  # one scale for all blocks, or one per block
            network.modality_encoders["AUDIO"].alibi_scale = nn.Parameter(weights[scale_name].clone(), requires_grad=False)
        problems = network.load_state_dict(weights, strict=False)
        if problems.missing_keys or problems.unexpected_keys:
            raise CheckpointError(f"{model}: weights do not fit the encoder: missing {problems.missing_keys[:3]}, "
                                  f"unexpected {problems.unexpected_keys[:3]}")
        self.network = network.to(self.device, self.dtype).eval()
        self.id, self.layer = f"sylreg/{model}", layer
        self.dims = int(self.centroids.shape[1])
        digest = hash_tensors(self.centroids, self.mapping)
        self.codebook_id = tokenizer_id(self.id, layer, len(self.centroids), int(self.mapping.max()) + 1, digest)

    def encode(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        samples = torch.tensor([len(wave) for wave in waves])
        padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(wave) for wave in waves], batch_first=True)
        padded, samples = padded.to(self.device, self.dtype), samples.to(self.device)
        with torch.inference_mode():
            if self.data2vec:
                hidden, lengths = self.network(padded, samples, self.layer)
            else:
                mask = (torch.arange(padded.shape[1], device=self.device)[None, :] < samples[:, None]).long()
                output = self.network(padded, attention_mask=mask, output_hidden_states=True)
                hidden = output.hidden_states[self.layer]
                lengths = self.network._get_feat_extract_output_lengths(samples)
        return [item[: int(count)].float() for item, count in zip(hidden, lengths.tolist())]


def hash_tensors(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]
