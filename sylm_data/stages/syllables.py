"""Audio -> frame features -> min-cut segments -> merged segments, batched; shared by the codebook
and tokenize stages so that a codebook is fitted on exactly the segments it will later name."""

import math
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from sylm_data import audio
from sylm_data.pipeline.stage import MapOptions, Rejected, StageConfigError, model_actors, resolve_device
from sylm_data.schemas.reject import Reason
from sylm_data.stages import segmentation, sylreg, units
from sylm_data.stages.encoders import FRAME_MS, SAMPLE_RATE, HfEncoder, MfccEncoder


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
        return replace(self, model=self.model or defaults["model"],
                       layer=defaults["layer"] if self.layer is None or self.encoder == "mfcc" else self.layer,
                       merge_threshold=defaults["merge_threshold"] if self.merge_threshold is None else self.merge_threshold)

    def segmentation(self) -> dict:
        """What decides the segments besides the encoder: a codebook is only valid for the same."""
        resolved = self.resolved()
        keys = ("sec_per_syllable", "min_frames", "max_frames", "merge_threshold")
        return {key: value for key, value in asdict(resolved).items() if key in keys} | {
            "affinity": ENCODER_DEFAULTS[self.encoder]["affinity"], "keep": ENCODER_DEFAULTS[self.encoder]["keep"]}


# SylReg's settings are the release's (sylreg.py); the others are this project's, tuned on the espeak-ng sample
ENCODER_DEFAULTS = {
    "sylreg": {"model": sylreg.HUB_ID, "layer": sylreg.LAYER, "merge_threshold": sylreg.MERGE_THRESHOLD,
               "affinity": segmentation.SHIFTED_DOT, "keep": sylreg.KEEP_SEGMENTS},
    "hf": {"model": "", "layer": 9, "merge_threshold": 0.3, "affinity": segmentation.COSINE, "keep": 1},
    "mfcc": {"model": "", "layer": 0, "merge_threshold": 0.3, "affinity": segmentation.COSINE, "keep": 1},
}


def encoder_identity(config: FeatureConfig) -> tuple[str, int]:
    """What a codebook is a codebook of: (encoder id, layer); the MFCC front end has one layer."""
    resolved = config.resolved()
    return ("mfcc", 0) if resolved.encoder == "mfcc" else (f"{resolved.encoder}/{resolved.model}", resolved.layer)


def decode_16k(audio_bytes: bytes) -> np.ndarray:
    """A row's audio as 16 kHz float32; an undecodable one is rejected."""
    try:
        return audio.decode(audio_bytes, SAMPLE_RATE).samples
    except audio.AudioDecodeError as error:
        raise Rejected(Reason.DECODE_ERROR, str(error)) from None


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
    return sylreg.SylRegEncoder(config.model, config.layer, device)


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
        layers = AutoConfig.from_pretrained(config.model).num_hidden_layers
    except (OSError, ValueError) as error:
        raise StageConfigError(f"cannot load encoder {config.model!r}: {str(error).strip().splitlines()[0]}") from None
    if not 0 <= config.layer <= layers:
        raise StageConfigError(f"{config.model} has layers 0..{layers}, not {config.layer}")


class Segmenter:
    def __init__(self, config: FeatureConfig) -> None:
        self.config = config.resolved()
        self.encoder = make_encoder(self.config)
        self.affinity = ENCODER_DEFAULTS[self.config.encoder]["affinity"]
        self.keep = ENCODER_DEFAULTS[self.config.encoder]["keep"]

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

    def _batch(self, waves: list[np.ndarray]) -> list[tuple[torch.Tensor, list[int]]]:
        features = self.encoder.encode(waves)
        lengths = torch.tensor([len(f) for f in features])
        padded = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
        counts = torch.tensor([math.ceil(n * FRAME_MS / 1000 / self.config.sec_per_syllable) for n in lengths.tolist()])
        costs = segmentation.segment_costs(padded, lengths.to(padded.device), self.config.max_frames, self.affinity)
        ends = segmentation.min_cut(costs, lengths.to(padded.device), counts, self.config.min_frames, self.config.max_frames)
        return [
            (item.cpu(), units.merge_similar(item.cpu(), item_ends, self.config.merge_threshold, self.keep))
            for item, item_ends in zip(features, ends)
        ]
