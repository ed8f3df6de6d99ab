"""Windowed-sinc resampling as a small FIR in torch: the resampler SylReg's release was fed with
(torchaudio.functional.resample's defaults: Hann window, 6 zero crossings, rolloff 0.99), which soxr
is not: soxr's filter changes SylReg's units on most non-16 kHz audio.

With f_c = rolloff · min(f_in, f_out) and t(i, j) = f_c · (i / f_in - j / f_out),

    y[j] = Σ_i x[i] · (f_c / f_in) · sinc(t) · cos²(π t / (2 · zeros))   over |t| ≤ zeros,

sinc(t) = sin(πt) / (πt), x zero outside [0, N), and N · f_out / f_in output samples (rounded up).
Output sample j of every block of f_out (after dividing both rates by their gcd) weighs the same
input offsets, so one strided convolution with f_out phases computes them all.
"""

import functools
import math

import numpy as np
import torch

ZEROS = 6  # zero crossings of the sinc on each side
ROLLOFF = 0.99  # cut-off as a fraction of the lower Nyquist frequency


@functools.lru_cache(maxsize=16)
def phase_filters(source: int, target: int, zeros: int = ZEROS, rolloff: float = ROLLOFF) -> tuple[torch.Tensor, int]:
    """(filters (target, 1, 2 · reach + source) float32, reach) for rates already divided by their gcd.

    Filter p gives output sample p of a block from the input samples block_start - reach .. block_start
    + source + reach - 1; `reach` is how far the window extends in input samples."""
    cutoff = rolloff * min(source, target)
    reach = math.ceil(zeros * source / cutoff)
    inputs = torch.arange(-reach, reach + source, dtype=torch.float64) / source  # input times, in blocks
    outputs = torch.arange(target, dtype=torch.float64)[:, None] / target  # output times, in blocks
    t = cutoff * (inputs[None, :] - outputs)
    window = torch.where(t.abs() <= zeros, torch.cos(math.pi * t / (2 * zeros)) ** 2, 0.0)
    filters = torch.special.sinc(t) * window * (cutoff / source)
    return filters[:, None, :].float(), reach


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """float32 (samples,) at `source_rate` -> float32 (ceil(samples · target_rate / source_rate),)."""
    if source_rate == target_rate:
        return wave
    common = math.gcd(source_rate, target_rate)
    source, target = source_rate // common, target_rate // common
    filters, reach = phase_filters(source, target)
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None, None]
    with torch.inference_mode():
        blocks = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (reach, reach + source)), filters, stride=source)
    return blocks[0].T.reshape(-1)[: -(-len(wave) * target // source)].numpy()
