"""Audio -> frame features -> min-cut segments -> merged segments, batched; shared by the codebook
and tokenize stages so that a codebook is fitted on exactly the segments it will later name."""

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sylm_data import audio
from sylm_data.pipeline.stage import MapOptions, Rejected, StageConfigError, resolve_device
from sylm_data.schemas.reject import Reason
from sylm_data.stages import segmentation, units
from sylm_data.stages.encoders import FRAME_MS, SAMPLE_RATE, HfEncoder, MfccEncoder


@dataclass
class FeatureConfig:
    encoder: str = "mfcc"  # mfcc | hf
    model: str = ""  # hf: a transformers HuBERT / wav2vec2 / data2vec-audio id or folder
    layer: int = 9  # hf: hidden-state index (0 = the CNN features' projection)
    device: str = "auto"
    sec_per_syllable: float = 0.15
    min_frames: int = 3
    max_frames: int = 35
    merge_threshold: float = 0.3  # merge neighbours whose mean features are at least this cosine-similar
    batch_size: int = 16  # utterances per encoder / DP batch
    actors: int = 1  # encoder processes; one per GPU on a GPU cluster
    gpus_per_actor: float = 1.0  # used when the device resolves to cuda

    def segmentation(self) -> dict:
        keys = ("sec_per_syllable", "min_frames", "max_frames", "merge_threshold")
        return {key: value for key, value in asdict(self).items() if key in keys}


def encoder_identity(config: FeatureConfig) -> tuple[str, int]:
    """What a codebook is a codebook of: (encoder id, layer); the MFCC front end has one layer."""
    return ("mfcc", 0) if config.encoder == "mfcc" else (f"hf/{config.model}", config.layer)


def decode_16k(audio_bytes: bytes) -> np.ndarray:
    """A row's audio as 16 kHz float32; an undecodable one is rejected."""
    try:
        return audio.decode(audio_bytes, SAMPLE_RATE).samples
    except audio.AudioDecodeError as error:
        raise Rejected(Reason.DECODE_ERROR, str(error)) from None


def actor_pool(config: FeatureConfig) -> MapOptions:
    """An actor pool of encoders, each on a GPU when the device is CUDA."""
    on_gpu = resolve_device(config.device) == "cuda"
    return MapOptions(actors=True, concurrency=config.actors, num_gpus=config.gpus_per_actor if on_gpu else 0.0,
                      batch_size=max(config.batch_size * 2, 16))


def make_encoder(config: FeatureConfig):
    device = resolve_device(config.device)
    if config.encoder == "mfcc":
        return MfccEncoder(device)
    if config.encoder == "hf":
        return HfEncoder(config.model, config.layer, device)
    raise ValueError(f"unknown encoder {config.encoder!r}: use mfcc or hf")


def check_encoder(config: FeatureConfig) -> None:
    """Driver-side check that the encoder can be built, without loading any weights."""
    if config.encoder == "mfcc":
        return
    if config.encoder != "hf":
        raise StageConfigError(f"unknown encoder {config.encoder!r}: use mfcc or hf")
    from transformers import AutoConfig

    try:
        layers = AutoConfig.from_pretrained(config.model).num_hidden_layers
    except (OSError, ValueError) as error:
        raise StageConfigError(f"cannot load encoder {config.model!r}: {str(error).strip().splitlines()[0]}") from None
    if not 0 <= config.layer <= layers:
        raise StageConfigError(f"{config.model} has layers 0..{layers}, not {config.layer}")


class Segmenter:
    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.encoder = make_encoder(config)

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
        costs = segmentation.segment_costs(padded, lengths.to(padded.device), self.config.max_frames)
        ends = segmentation.min_cut(costs, lengths.to(padded.device), counts, self.config.min_frames, self.config.max_frames)
        return [
            (item.cpu(), units.merge_similar(item.cpu(), item_ends, self.config.merge_threshold))
            for item, item_ends in zip(features, ends)
        ]
