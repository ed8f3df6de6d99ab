"""The one audio decoding helper: sniff, decode, resample, encode.

soundfile (libsndfile) handles wav/flac/mp3/ogg/opus; PyAV covers containers it cannot read
(m4a, webm). torchaudio is deliberately not used: its PyPI wheels are CUDA builds.
"""

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr


class AudioDecodeError(ValueError):
    """The bytes are not audio we can decode (corrupt, truncated, or an unknown format)."""


@dataclass(frozen=True)
class Decoded:
    samples: np.ndarray  # float32, mono, shape (num_samples,)
    sample_rate: int

    @property
    def duration_ms(self) -> int:
        return round(1000 * len(self.samples) / self.sample_rate)


def sniff_format(data: bytes) -> str:
    """Container format from the first bytes: wav, flac, mp3, ogg, opus, m4a, webm or unknown."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "opus" if b"OpusHead" in head else "ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return "unknown"


def decode(data: bytes, target_rate: int | None = None) -> Decoded:
    """Decode encoded audio to mono float32, resampled to `target_rate` when given.

    Raises AudioDecodeError for anything that does not decode to at least one sample.
    """
    if not data:
        raise AudioDecodeError("no audio bytes")
    fmt = sniff_format(data)
    if fmt in ("m4a", "webm"):
        samples, rate = _decode_with_av(data)
    else:
        samples, rate = _decode_with_soundfile(data, fmt)
    if target_rate is not None and rate != target_rate:
        samples = soxr.resample(samples, rate, target_rate).astype(np.float32, copy=False)
        rate = target_rate
    return Decoded(samples, rate)


def _decode_with_soundfile(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioDecodeError(f"{fmt}: {error}") from None
    return samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0], rate


def _decode_with_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            frames = [
                out.to_ndarray().reshape(-1)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
    except (av.FFmpegError, IndexError, ValueError) as error:
        raise AudioDecodeError(f"av: {error}") from None
    if not frames:
        return np.zeros(0, np.float32), rate
    return np.concatenate(frames).astype(np.float32, copy=False), rate


def encode_flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """Lossless 16-bit FLAC of mono float samples (used where a source must be cut)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
