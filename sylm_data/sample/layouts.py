"""Pack sample utterances into the published source layouts (for the quickstart, tests, benches).

Emilia:       {LANG}-B{NNNNNN}.tar of {key}.mp3 + {key}.json (id, wav, text, duration, speaker, language, dnsmos)
Emilia-YODAS: the same tars; json has _id (no id/wav) and phone_count; keys like EN_<video>_W000006
YODAS2:       data/{subset}/audio/NNNNNNNN.tar.gz of long recordings + text/*.json + duration/*.txt
"""

import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sylm_data import audio
from sylm_data.sample import MANIFEST


@dataclass(frozen=True)
class SampleUtterance:
    key: str
    audio: bytes  # mp3
    text: str
    speaker: str
    language: str
    duration_s: float


def sample_utterances(manifest: Path = MANIFEST) -> list[SampleUtterance]:
    utterances = []
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        data = (manifest.parent / entry["audio"]).read_bytes()
        duration_s = audio.decode(data).duration_ms / 1000
        utterances.append(SampleUtterance(entry["id"], data, entry["text"], entry["speaker"], entry["language"], duration_s))
    return utterances


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _chunks(items: list, size: int) -> Iterable[tuple[int, list]]:
    for start in range(0, len(items), size):
        yield start // size, items[start : start + size]


def write_emilia(folder: Path, utterances: list[SampleUtterance], shard_size: int = 8, yodas: bool = False,
                 first_shard: int = 0) -> list[Path]:
    """Emilia (or Emilia-YODAS) tars of `shard_size` utterances each; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, chunk in _chunks(utterances, shard_size):
        shard += first_shard
        path = folder / f"EN-B{shard:06d}.tar"
        with tarfile.open(path, "w") as archive:
            for index, utterance in enumerate(chunk):
                if yodas:
                    key = f"EN_{utterance.key.replace('-', '')}v{shard:04d}_W{index:06d}"
                    fields = {"_id": key, "phone_count": len(utterance.text) // 2}
                else:
                    key = f"EN_B{shard:05d}_S{index // 4:05d}_W{index:06d}"
                    fields = {"id": key, "wav": f"EN_B{shard:05d}/{key}.mp3"}
                fields |= {
                    "text": " " + utterance.text,
                    "duration": round(utterance.duration_s, 3),
                    "speaker": f"EN_B{shard:05d}_S{index // 4:05d}",
                    "language": utterance.language,
                    "dnsmos": 3.2 + 0.01 * index,
                }
                add_member(archive, f"{key}.mp3", utterance.audio)
                add_member(archive, f"{key}.json", json.dumps(fields).encode())
        paths.append(path)
    return paths


def write_yodas2(root: Path, utterances: list[SampleUtterance], subset: str = "en000", per_recording: int = 4,
                 gap_ms: int = 700) -> list[Path]:
    """A YODAS2 subset: recordings of `per_recording` utterances joined by silence; returns audio archives."""
    subset_dir = root / "data" / subset
    for folder in ("audio", "text", "duration"):
        (subset_dir / folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for number, chunk in _chunks(utterances, per_recording * 2):
        entries, durations = [], []
        archive_path = subset_dir / "audio" / f"{number:08d}.tar.gz"
        with tarfile.open(archive_path, "w:gz") as archive:
            for recording, group in _chunks(chunk, per_recording):
                audio_id = f"Vid{number:03d}-{recording:02d}x"  # YouTube ids may contain '-'
                pieces, texts, length = [], {}, 0
                for index, utterance in enumerate(group):
                    decoded = audio.decode(utterance.audio)
                    rate = decoded.sample_rate
                    # utterance ids carry centiseconds: start each utterance on a 10 ms boundary
                    start_ms = -(-(length * 1000 // rate + gap_ms) // 10) * 10
                    end_ms = -(-(start_ms + decoded.duration_ms) // 10) * 10
                    texts[f"{audio_id}-{index:05d}-{start_ms // 10:08d}-{end_ms // 10:08d}"] = utterance.text
                    pieces += [np.zeros(start_ms * rate // 1000 - length, np.float32), decoded.samples]
                    length = start_ms * rate // 1000 + len(decoded.samples)
                samples = np.concatenate(pieces + [np.zeros(rate * gap_ms // 1000, np.float32)])
                add_member(archive, f"{audio_id}.flac", audio.encode_flac(samples, rate))
                entries.append({"audio_id": audio_id, "text": texts})
                durations.append(f"{audio_id} {len(samples) / rate:.2f}")
        (subset_dir / "text" / f"{number:08d}.json").write_text(json.dumps(entries))
        (subset_dir / "duration" / f"{number:08d}.txt").write_text("\n".join(durations) + "\n")
        paths.append(archive_path)
    return paths
