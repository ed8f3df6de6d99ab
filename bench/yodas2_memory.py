"""Peak memory of cutting one long YODAS2 recording: streamed decode vs decoding it whole.

    python bench/yodas2_memory.py [--minutes 120] [--keep DIR]

Fixture: one `./<audio_id>.wav` (24 kHz, 16-bit) of the bundled espeak sample tiled with 0.7 s
gaps to `--minutes`, in a YODAS2 subset (`data/en000/audio/00000000.tar.gz`, text and duration
files), with one utterance per tiled sample. Each path runs in its own fresh process, which reads
the archive's every record and reports `resource.getrusage` maxrss (after its imports too, as the
floor), wall time, and a digest of the cut FLAC bytes:

- streaming: the reader as it is (`Yodas2Reader.read`: a pre-pass for damage, then the member
  decoded as it streams out of the archive and cut as it goes);
- whole: the reader's former path (the member read into bytes, decoded whole to float32, sliced).

Equal digests mean the cuts are bit-identical.
"""

import argparse
import hashlib
import json
import posixpath
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sylm_data import audio  # noqa: E402
from sylm_data.sample import layouts  # noqa: E402
from sylm_data.sources import READERS  # noqa: E402
from sylm_data.sources.yodas2 import Yodas2Reader, parse_utterance_id  # noqa: E402

RATE = layouts.YODAS2_RATE
AUDIO_ID = "LongVid-x_1"
GAP_MS = 700


def build(folder: Path, minutes: float) -> Path:
    """The fixture subset under `folder`; the wav is written a piece at a time (never whole in memory)."""
    subset = folder / "data" / "en000"
    for name in ("audio", "text", "duration"):
        (subset / name).mkdir(parents=True, exist_ok=True)
    pieces = [(audio.decode(u.audio, RATE).samples, u.text) for u in layouts.sample_utterances()]
    wav_path, texts, length, index = folder / f"{AUDIO_ID}.wav", {}, 0, 0
    gap = np.zeros(RATE * GAP_MS // 1000, np.float32)
    with soundfile.SoundFile(wav_path, "w", RATE, 1, format="WAV", subtype="PCM_16") as wav:
        while length < minutes * 60 * RATE:
            samples, text = pieces[index % len(pieces)]
            wav.write(gap)
            start_cs = -(-(length + len(gap)) * 100 // RATE)  # on a 10 ms boundary, like the ids
            wav.write(np.zeros(start_cs * RATE // 100 - length - len(gap), np.float32))
            wav.write(samples)
            end_cs = -(-(start_cs * RATE // 100 + len(samples)) * 100 // RATE)
            texts[f"{AUDIO_ID}-{index:05d}-{start_cs:08d}-{end_cs:08d}"] = text
            length = start_cs * RATE // 100 + len(samples)
            index += 1
        wav.write(gap)
        length += len(gap)
    archive = subset / "audio" / "00000000.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as opened:
        opened.add(wav_path, arcname=f"./{AUDIO_ID}.wav")
    wav_path.unlink()
    (subset / "text" / "00000000.json").write_text(json.dumps([{"audio_id": AUDIO_ID, "text": texts}]))
    (subset / "duration" / "00000000.txt").write_text(f"{AUDIO_ID} {length / RATE:.2f}\n")
    return archive


def whole_decode_records(path: str, transcripts: dict) -> Iterator[tuple[str, bytes]]:
    """The former path: each member read whole, decoded whole, cut by slicing."""
    with tarfile.open(path, "r|*") as archive:
        for member in archive:
            audio_id = posixpath.basename(member.name).split(".")[0]
            recording = audio.decode(archive.extractfile(member).read())
            for utt_id in transcripts[audio_id]:
                _, start_ms, end_ms = parse_utterance_id(utt_id)
                first, last = (round(ms * recording.sample_rate / 1000) for ms in (start_ms, end_ms))
                segment = np.ascontiguousarray(recording.samples[first:last])
                yield utt_id, audio.encode_flac(segment, recording.sample_rate)


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(path_kind: str, archive: str) -> dict:
    import av  # noqa: F401  (the streamed decode's library: loaded before the floor, for both paths alike)

    floor = maxrss_mib()
    partition = READERS["yodas2"].partitions([archive])[0]
    start = time.perf_counter()
    digest, count, audio_bytes = hashlib.sha256(), 0, 0
    if path_kind == "streaming":
        records = ((record.key, record.audio) for record in READERS["yodas2"].read(partition))
    else:
        records = whole_decode_records(archive, Yodas2Reader._transcripts(partition.companions["text"]))
    for key, data in records:
        assert data is not None, key
        digest.update(key.encode() + hashlib.sha256(data).digest())
        count, audio_bytes = count + 1, audio_bytes + len(data)
    return {"path": path_kind, "maxrss_mib": maxrss_mib(), "floor_mib": floor, "seconds": time.perf_counter() - start,
            "records": count, "flac_mib": audio_bytes / 2**20, "digest": digest.hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=120, help="length of the fixture recording")
    parser.add_argument("--keep", type=Path, help="build the fixture here (reused if present) instead of a temp folder")
    parser.add_argument("--measure", choices=["streaming", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--archive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.archive)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        archive = folder / "data/en000/audio/00000000.tar.gz"
        started = time.perf_counter()
        if not archive.exists():
            build(folder, args.minutes)
        print(f"fixture: {args.minutes:g} min at {RATE} Hz, {archive.stat().st_size / 2**20:.0f} MiB archive "
              f"(wav {args.minutes * 60 * RATE * 2 / 2**20:.0f} MiB, float32 {args.minutes * 60 * RATE * 4 / 2**20:.0f} MiB), "
              f"built in {time.perf_counter() - started:.0f} s")
        results = []
        for kind in ("streaming", "whole"):
            done = subprocess.run([sys.executable, __file__, "--measure", kind, "--archive", str(archive)],
                                  check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{'path':<10} {'peak RSS':>10} {'after imports':>14} {'reading':>10} {'seconds':>8} {'records':>8}")
        for result in results:
            print(f"{result['path']:<10} {result['maxrss_mib']:>7.0f} MiB {result['floor_mib']:>10.0f} MiB "
                  f"{result['maxrss_mib'] - result['floor_mib']:>6.0f} MiB {result['seconds']:>8.1f} {result['records']:>8}")
        same = len({result["digest"] for result in results}) == 1
        print(f"cut FLAC bytes identical: {same} ({results[0]['flac_mib']:.0f} MiB of cuts)")


if __name__ == "__main__":
    main()
