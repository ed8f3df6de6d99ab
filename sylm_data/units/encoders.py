"""Frame features at 50 Hz for syllable units: a classical MFCC front end, or a layer of an SSL model.

`mfcc` needs no weights (offline, CPU); `hf` is any transformers HuBERT / wav2vec2 / data2vec-audio
checkpoint and one of its layers. Both take 16 kHz float32 audio and return (frames, dims) per item.
"""

import math

import numpy as np
import torch

from sylm_data import offline
from sylm_data.checkpoints import from_pretrained_strict

SAMPLE_RATE = 16_000
FRAME_MS = 20  # 50 Hz
HOP = SAMPLE_RATE * FRAME_MS // 1000


class MfccEncoder:
    """13 MFCCs from 40 log-mel bands (25 ms windows, 20 ms hop) with deltas and double deltas,
    normalised per utterance: 39 dims at 50 Hz."""

    id = "mfcc"
    layer = 0
    dims = 39

    def __init__(self, device: str = "cpu", mel_bands: int = 40, ceps: int = 13) -> None:
        self.device = torch.device(device)
        self.window = 400  # 25 ms
        self.fft = 512
        self.mel = _mel_filterbank(mel_bands, self.fft, SAMPLE_RATE).to(self.device)
        self.dct = _dct_matrix(mel_bands, ceps).to(self.device)

    def encode(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        return [self._one(torch.from_numpy(wave).to(self.device)) for wave in waves]

    def _one(self, wave: torch.Tensor) -> torch.Tensor:
        frames = max(math.ceil(len(wave) / HOP), 1)
        padded = torch.nn.functional.pad(wave, (self.window // 2, frames * HOP + self.window - len(wave)))
        spectrum = torch.stft(padded, self.fft, hop_length=HOP, win_length=self.window,
                              window=torch.hann_window(self.window, device=self.device), center=False,
                              return_complex=True)[:, :frames]
        log_mel = torch.log(self.mel @ spectrum.abs().pow(2) + 1e-6)  # (bands, frames)
        ceps = (self.dct @ log_mel).T  # (frames, ceps)
        delta = _delta(ceps)
        features = torch.cat([ceps, delta, _delta(delta)], dim=1)
        return (features - features.mean(0)) / (features.std(0, unbiased=False) + 1e-5)


def _mel_filterbank(bands: int, fft: int, rate: int) -> torch.Tensor:
    def to_mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    edges_hz = 700 * (10 ** (np.linspace(to_mel(20), to_mel(rate / 2), bands + 2) / 2595) - 1)
    bins = np.linspace(0, rate / 2, fft // 2 + 1)
    bank = np.zeros((bands, len(bins)), np.float32)
    for band in range(bands):
        low, centre, high = edges_hz[band : band + 3]
        bank[band] = np.clip(np.minimum((bins - low) / (centre - low), (high - bins) / (high - centre)), 0, None)
    return torch.from_numpy(bank)


def _dct_matrix(bands: int, ceps: int) -> torch.Tensor:
    n = np.arange(bands)
    return torch.from_numpy(np.cos(np.pi / bands * (n + 0.5)[None, :] * np.arange(ceps)[:, None]).astype(np.float32))


def _delta(features: torch.Tensor, width: int = 2) -> torch.Tensor:
    padded = torch.nn.functional.pad(features.T[None], (width, width), mode="replicate")[0].T
    weights = sum(k * k for k in range(1, width + 1)) * 2
    return sum(k * (padded[width + k : len(padded) - width + k] - padded[width - k : len(padded) - width - k])
               for k in range(1, width + 1)) / weights


class HfEncoder:
    """Hidden states of layer `layer` of a transformers HuBERT / wav2vec2 / data2vec-audio model."""

    def __init__(self, model_id: str, layer: int, device: str = "cpu") -> None:
        from transformers import AutoFeatureExtractor, AutoModel

        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        cached = offline.local_only(model_id)
        self.extractor = AutoFeatureExtractor.from_pretrained(model_id, local_files_only=cached)
        # a HuBERT/wav2vec2 fine-tuned for CTC leaves its head unused; the encoder's own weights must all fit
        self.model = from_pretrained_strict(AutoModel, model_id, heads_allowed=True, dtype=self.dtype,
                                            local_files_only=cached).to(self.device).eval()
        if not 0 <= layer <= self.model.config.num_hidden_layers:
            raise ValueError(f"{model_id} has layers 0..{self.model.config.num_hidden_layers}, not {layer}")
        self.id, self.layer = f"hf/{model_id}", layer
        self.dims = self.model.config.hidden_size

    def encode(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        inputs = self.extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True,
                                return_attention_mask=True)
        mask = inputs["attention_mask"]
        with torch.inference_mode():
            output = self.model(inputs["input_values"].to(self.device, self.dtype), attention_mask=mask.to(self.device),
                                output_hidden_states=True)
        frames = self.model._get_feat_extract_output_lengths(mask.sum(-1)).tolist()
        hidden = output.hidden_states[self.layer].float()
        return [hidden[index, : int(count)] for index, count in enumerate(frames)]
