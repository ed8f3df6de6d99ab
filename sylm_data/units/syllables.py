"""Audio -> frame features -> min-cut segments -> merged segments -> the vectors a codebook names,
batched; shared by the codebook and tokenize stages so that a codebook is fitted on exactly the
vectors it will later name."""

from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from sylm_data import audio, offline
from sylm_data.pipeline.stage import MapOptions, Rejected, StageConfigError, model_actors, resolve_device
from sylm_data.schemas.reject import Reason
from sylm_data.units import assign, segmentation, sylreg
from sylm_data.units.encoders import FRAME_MS, SAMPLE_RATE, HfEncoder, MfccEncoder
from sylm_data.units.resample import resample


@dataclass
class FeatureConfig:
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "actors", "gpus_per_actor")
    encoder: str = "sylreg"  # sylreg | hf | mfcc
    model: str = ""  # sylreg: a SylReg checkpoint (default ryota-komatsu/SylReg-Distill); hf: a transformers id or folder
    layer: int | None = None  # hidden-state index; default: sylreg 6, hf 9 (0 = the CNN features' projection)
    device: str = "auto"
    sec_per_syllable: float = 0.15
    min_frames: int = 3
    max_frames: int = 35
    merge_threshold: float | None = None  # merge neighbours at least this cosine-similar; default: sylreg 0.95, else 0.3
    dtype: str = "auto"  # sylreg encoder: auto = the checkpoint's (float32, as its units were made); bfloat16 changes units
    dp_dtype: str = "float64"  # segmentation costs: float64 finds the exact minimum cut; float32 drifts on clips >= 10 s
    batch_size: int = 16  # utterances per encoder / DP batch
    actors: int = 1  # encoder processes; one per GPU on a GPU cluster
    gpus_per_actor: float = 1.0  # used when the device resolves to cuda

    def resolved(self) -> "FeatureConfig":
        """This config with the encoder's defaults filled in; unknown encoders are refused."""
        if self.encoder not in ENCODER_DEFAULTS:
            raise StageConfigError(f"unknown encoder {self.encoder!r}: use {', '.join(ENCODER_DEFAULTS)}")
        defaults = ENCODER_DEFAULTS[self.encoder]
        if self.encoder == "hf" and not self.model:
            raise StageConfigError("encoder hf needs a model: a transformers HuBERT / wav2vec2 / data2vec-audio id or folder")
        if self.dtype not in sylreg.DTYPES or (self.dtype != "auto" and self.encoder != "sylreg"):
            raise StageConfigError(f"dtype {self.dtype!r}: the sylreg encoder takes {', '.join(sylreg.DTYPES)}; "
                                   "other encoders take auto")
        if self.dp_dtype not in DP_DTYPES:
            raise StageConfigError(f"unknown dp_dtype {self.dp_dtype!r}: use {' or '.join(DP_DTYPES)}")
        return replace(self, model=self.model or defaults["model"],
                       layer=defaults["layer"] if self.layer is None or self.encoder == "mfcc" else self.layer,
                       merge_threshold=defaults["merge_threshold"] if self.merge_threshold is None else self.merge_threshold)

    def segmentation(self) -> dict:
        """What decides the segments and the vectors named besides the encoder: a codebook is only valid for the same."""
        resolved = self.resolved()
        defaults = ENCODER_DEFAULTS[self.encoder]
        keys = ("sec_per_syllable", "min_frames", "max_frames", "merge_threshold")
        # `standardize` only where set, so that codebooks fitted on plain means before it existed still match
        return {key: value for key, value in asdict(resolved).items() if key in keys} | {
            "affinity": defaults["affinity"], "keep": defaults["keep"]} | (
            {"standardize": True} if defaults["standardize"] else {})


# SylReg's settings are the release's (sylreg.py); the others are this project's, tuned on the espeak-ng sample
ENCODER_DEFAULTS = {
    "sylreg": {"model": sylreg.HUB_ID, "layer": sylreg.LAYER, "merge_threshold": sylreg.MERGE_THRESHOLD,
               "affinity": segmentation.SHIFTED_DOT, "keep": sylreg.KEEP_SEGMENTS, "standardize": True},
    "hf": {"model": "", "layer": 9, "merge_threshold": 0.3, "affinity": segmentation.COSINE, "keep": 1, "standardize": False},
    "mfcc": {"model": "", "layer": 0, "merge_threshold": 0.3, "affinity": segmentation.COSINE, "keep": 1,
             "standardize": False},
}
DP_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def encoder_identity(config: FeatureConfig) -> tuple[str, int]:
    """What a codebook is a codebook of: (encoder id, layer); the MFCC front end has one layer."""
    resolved = config.resolved()
    return ("mfcc", 0) if resolved.encoder == "mfcc" else (f"{resolved.encoder}/{resolved.model}", resolved.layer)


def decode_16k(audio_bytes: bytes) -> np.ndarray:
    """A row's audio as 16 kHz float32, resampled by windowed sinc as SylReg's release was fed; an
    undecodable one is rejected."""
    try:
        decoded = audio.decode(audio_bytes)
    except audio.AudioDecodeError as error:
        raise Rejected(Reason.DECODE_ERROR, str(error)) from None
    return resample(decoded.samples, decoded.sample_rate, SAMPLE_RATE)


def actor_pool(config: FeatureConfig) -> MapOptions:
    """An actor pool of encoders, each on a GPU when the device is CUDA."""
    return model_actors(resolve_device(config.device) == "cuda", config.actors, config.gpus_per_actor,
                        max(config.batch_size * 2, 16))


def make_encoder(config: FeatureConfig):
    config = config.resolved()
    device = resolve_device(config.device)
    if config.encoder == "mfcc":
        return MfccEncoder(device)
    if config.encoder == "hf":
        return HfEncoder(config.model, config.layer, device)
    return sylreg.SylRegEncoder(config.model, config.layer, device, config.dtype)


def check_encoder(config: FeatureConfig) -> None:
    """Driver-side check that the encoder can be built, reading its config but no weights."""
    config = config.resolved()
    if config.encoder == "mfcc":
        return
    if config.encoder == "sylreg":
        try:
            layers = sylreg.layer_count(sylreg.read_config(config.model))
        except sylreg.CheckpointError as error:
            raise StageConfigError(f"cannot load encoder {config.model!r}: {error}") from None
        if not 0 <= config.layer < layers:
            raise StageConfigError(f"{config.model} has layers 0..{layers - 1}, not {config.layer}")
        return
    from transformers import AutoConfig

    try:
        layers = AutoConfig.from_pretrained(config.model, local_files_only=offline.local_only(config.model)).num_hidden_layers
    except (OSError, ValueError) as error:
        raise StageConfigError(f"cannot load encoder {config.model!r}: {offline.reason(error, config.model)}") from None
    if not 0 <= config.layer <= layers:
        raise StageConfigError(f"{config.model} has layers 0..{layers}, not {config.layer}")


class Segmenter:
    def __init__(self, config: FeatureConfig) -> None:
        self.config = config.resolved()
        self.encoder = make_encoder(self.config)
        defaults = ENCODER_DEFAULTS[self.config.encoder]
        self.affinity, self.keep, self.standardize = defaults["affinity"], defaults["keep"], defaults["standardize"]

    def __call__(self, waves: list[np.ndarray]) -> list[tuple[torch.Tensor, list[int]]]:
        """(features (frames, dims), segment end frames) per wave; waves are 16 kHz float32.

        Waves are batched by length (less padding for the encoder and the DP), results in input order."""
        order = sorted(range(len(waves)), key=lambda index: len(waves[index]))
        out: list = [None] * len(waves)
        for start in range(0, len(order), self.config.batch_size):
            indices = order[start : start + self.config.batch_size]
            for index, result in zip(indices, self._batch([waves[i] for i in indices])):
                out[index] = result
        return out

    def pool(self, features: torch.Tensor, ends: list[int]) -> torch.Tensor:
        """The vectors a codebook names (segments, dims): each segment's mean feature, standardized over
        its dims for SylReg (its released codebook was fitted on such vectors)."""
        pooled = assign.pool(features, ends)
        return assign.standardize(pooled) if self.standardize else pooled

    def _batch(self, waves: list[np.ndarray]) -> list[tuple[torch.Tensor, list[int]]]:
        features = self.encoder.encode(waves)
        lengths = torch.tensor([len(f) for f in features])
        padded = torch.nn.utils.rnn.pad_sequence(features, batch_first=True).to(DP_DTYPES[self.config.dp_dtype])
        counts = segmentation.syllable_counts(lengths, FRAME_MS, self.config.sec_per_syllable)
        costs = segmentation.segment_costs(padded, lengths.to(padded.device), self.config.max_frames, self.affinity)
        ends = segmentation.min_cut(costs, lengths.to(padded.device), counts, self.config.min_frames, self.config.max_frames)
        return [
            (item.cpu(), assign.merge_similar(item.cpu(), item_ends, self.config.merge_threshold, self.keep))
            for item, item_ends in zip(features, ends)
        ]
