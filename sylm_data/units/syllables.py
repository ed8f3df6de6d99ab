"""Audio -> frame features -> min-cut segments -> merged segments -> the vectors a codebook names,
batched; shared by the codebook and tokenize stages so that a codebook is fitted on exactly the
vectors it will later name."""

import numpy as np
import torch

from sylm_data import audio
from sylm_data.pipeline.stage import Rejected, resolve_device
from sylm_data.schemas.reject import Reason
from sylm_data.units import assign, segmentation, sylreg
from sylm_data.units.features import FeatureConfig, encoder_defaults
from sylm_data.units.encoders import FRAME_MS, SAMPLE_RATE, HfEncoder, MfccEncoder
from sylm_data.units.resample import resample


def decode_16k(audio_bytes: bytes) -> np.ndarray:
    """A row's audio as 16 kHz float32, resampled by windowed sinc as SylReg's release was fed; an
    undecodable one is rejected."""
    try:
        decoded = audio.decode(audio_bytes)
    except audio.AudioDecodeError as error:
        raise Rejected(Reason.DECODE_ERROR, str(error)) from None
    return resample(decoded.samples, decoded.sample_rate, SAMPLE_RATE)


def make_encoder(config: FeatureConfig):
    config = config.resolved()
    device = resolve_device(config.device)
    if config.encoder == "mfcc":
        return MfccEncoder(device)
    if config.encoder == "hf":
        return HfEncoder(config.model, config.layer, device)
    return sylreg.SylRegEncoder(config.model, config.layer, device, config.dtype)


class Segmenter:
    def __init__(self, config: FeatureConfig) -> None:
        self.config = config.resolved()
        self.encoder = make_encoder(self.config)
        defaults = encoder_defaults(self.config.encoder)
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
        padded = torch.nn.utils.rnn.pad_sequence(features, batch_first=True).to(getattr(torch, self.config.dp_dtype))
        counts = segmentation.syllable_counts(lengths, FRAME_MS, self.config.sec_per_syllable)
        costs = segmentation.segment_costs(padded, lengths.to(padded.device), self.config.max_frames, self.affinity)
        ends = segmentation.min_cut(costs, lengths.to(padded.device), counts, self.config.min_frames, self.config.max_frames)
        return [
            (item.cpu(), assign.merge_similar(item.cpu(), item_ends, self.config.merge_threshold, self.keep))
            for item, item_ends in zip(features, ends)
        ]
