"""The one audio decoding helper: sniff, decode (whole, or streamed and cut as it comes), resample, encode.

soundfile (libsndfile) handles wav/flac/mp3/ogg/opus; PyAV covers containers it cannot read
(m4a, webm) and the streamed decode, which reads a file once, front to back, so a long recording
never has to be in memory whole. torchaudio is deliberately not used: its PyPI wheels are CUDA builds.
"""

import contextlib
import io
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

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


_AV_FORMATS = ("m4a", "webm")  # what `decode` hands to PyAV; soundfile decodes the rest


def _decode_with_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:  # seekable: an mp4 may keep its index at the end
            stream = container.streams.audio[0]
            frames = list(_av_blocks(container, stream, mono_in_ffmpeg=True))
    except (av.FFmpegError, IndexError, ValueError) as error:
        raise AudioDecodeError(f"av: {error}") from None
    rate = stream.codec_context.sample_rate
    if not frames:
        return np.zeros(0, np.float32), rate
    return np.concatenate(frames).astype(np.float32, copy=False), rate


def _av_blocks(container, stream, mono_in_ffmpeg: bool) -> Iterator[np.ndarray]:
    """The stream's frames as mono float32 arrays. Downmixed the way `decode` does for the format:
    by FFmpeg for the formats only PyAV reads, else as the channels' mean (soundfile's path), so a
    PCM file streamed gives exactly the samples `decode` gives."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono" if mono_in_ffmpeg else None)
    channels = 1 if mono_in_ffmpeg else len(stream.layout.channels)
    for frame in itertools.chain(container.decode(stream), [None]):  # None: flush the resampler
        for out in resampler.resample(frame):
            samples = out.to_ndarray().reshape(-1, channels)  # packed "flt": one row, channels interleaved
            yield samples[:, 0] if channels == 1 else samples.mean(axis=1)


class _ForwardOnly:
    """`file` with the bytes already read for sniffing put back in front, and no `seek`: FFmpeg then
    demuxes it as a pipe, never asking to go back (a member of a tar read as a stream cannot)."""

    def __init__(self, file: BinaryIO, head: bytes) -> None:
        self.file, self.head = file, head

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.file.read(size)
        taken = self.head if size < 0 else self.head[:size]
        self.head = self.head[len(taken):]
        return taken + (self.file.read() if size < 0 else b"")


class AudioStream:
    """Audio decoded as it is read: `blocks()` gives mono float32 arrays in order, up to a few
    seconds each; `samples_read` counts what they have held so far (the recording's length once
    they are exhausted). PCM (wav, flac) decodes to exactly `decode`'s samples; lossy formats go
    through FFmpeg's decoders here and may differ from libsndfile's in the last bits and in how
    many padding samples are trimmed."""

    def __init__(self, container, stream, fmt: str) -> None:
        self._container, self._stream, self._fmt = container, stream, fmt
        self.sample_rate: int = stream.codec_context.sample_rate
        self.samples_read = 0

    def blocks(self) -> Iterator[np.ndarray]:
        """Raises AudioDecodeError where the data stops decoding (the blocks before it stand)."""
        import av

        try:
            for block in _av_blocks(self._container, self._stream, mono_in_ffmpeg=self._fmt in _AV_FORMATS):
                self.samples_read += len(block)
                yield block
        except (av.FFmpegError, ValueError) as error:
            raise AudioDecodeError(f"{self._fmt} at sample {self.samples_read}: {error}") from None


@contextlib.contextmanager
def open_stream(file: BinaryIO) -> Iterator[AudioStream]:
    """Open encoded audio for a streamed decode, reading `file` once, front to back (no seeking).

    Raises AudioDecodeError when it does not open as audio. An mp4/m4a whose index sits at its end
    cannot be streamed: `decode` its bytes instead.
    """
    import av

    head = file.read(64)
    if not head:
        raise AudioDecodeError("no audio bytes")
    fmt = sniff_format(head)
    # FFmpeg's wav demuxer reads 4 KiB packets by default: per-packet overhead then costs more
    # than the decode; 256 KiB (5 s of 24 kHz 16-bit mono) keeps a block small next to an utterance
    options = {"max_size": str(1 << 18)} if fmt == "wav" else {}
    try:
        container = av.open(_ForwardOnly(file, head), mode="r", container_options=options)
    except (av.FFmpegError, ValueError) as error:
        raise AudioDecodeError(f"{fmt}: {error}") from None
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{fmt}: no audio stream")
        yield AudioStream(container, container.streams.audio[0], fmt)


def cut(blocks: Iterable[np.ndarray], spans: Sequence[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
    """Cut sample spans `[first, last)` (0 <= first < last) out of consecutive blocks of samples,
    holding only what a span not yet cut still needs.

    Yields `(index into spans, samples)` once per span, in order of `first` (then `last`, then
    index), each as soon as its samples have arrived and the spans before it are out; spans that
    run past the last sample come at the end, cut short there (empty when they start past it).
    Memory: the samples from the earliest uncut span's start to the newest block, so at most the
    longest span plus one block (and the held blocks, not copies, until a span is cut).
    """
    order = sorted(range(len(spans)), key=lambda index: (spans[index][0], spans[index][1], index))
    held: deque[tuple[int, np.ndarray]] = deque()  # (position of its first sample, block)
    position = head = 0
    for block in blocks:
        if len(block):
            held.append((position, block))
            position += len(block)
        while head < len(order) and spans[order[head]][1] <= position:
            yield order[head], _take(held, *spans[order[head]])
            head += 1
        needed_from = spans[order[head]][0] if head < len(order) else position
        while held and held[0][0] + len(held[0][1]) <= needed_from:
            held.popleft()
    for index in order[head:]:
        first, last = spans[index]
        yield index, _take(held, first, min(last, position)) if first < position else np.zeros(0, np.float32)


def _take(held: deque, first: int, last: int) -> np.ndarray:
    pieces = [block[max(first - start, 0) : last - start] for start, block in held
              if start < last and start + len(block) > first]
    if len(pieces) == 1:
        return pieces[0].copy()  # not a view: the block can go once its spans are cut
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def encode_flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """Lossless 16-bit FLAC of mono float samples (used where a source must be cut)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
