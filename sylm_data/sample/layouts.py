"""Pack sample utterances into the published source layouts (for the quickstart, tests, benches).

Emilia:       {LANG}-B{NNNNNN}.tar of {key}.mp3 + {key}.json (id, wav, text, duration, speaker, language,
              dnsmos); keys EN_B{batch}_S{source}_W{segment} with W restarting at 0 for each S, `wav`
              EN_B00000/EN_B00000_S00000/mp3/<key>.mp3; tar NN holds batch NN // 10, sources S = NN mod 10
Emilia-YODAS: the same tars; json has _id (no id/wav) and phone_count; keys EN_<video>_W000006 with
              YouTube ids as they are ('-' and '_' kept), speakers EN_<video>_SPEAKER_00; a video's
              clips run on into the next tar
YODAS2:       data/{subset}/audio/NNNNNNNN.tar.gz of ./<audio_id>.wav recordings (24 kHz, 16-bit) +
              text/NNNNNNNN.json ({} for a recording without utterances) + duration/NNNNNNNN.txt
"""

import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

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
    """Emilia (or Emilia-YODAS) tars of `shard_size` utterances each; returns their paths.

    Emilia: four segments per source unit. Emilia-YODAS: three clips per video, numbered across
    tars, so a video straddles two tars when `shard_size` is not a multiple of three.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, chunk in _chunks(utterances, shard_size):
        shard += first_shard
        path = folder / f"EN-B{shard:06d}.tar"
        with tarfile.open(path, "w") as archive:
            for index, utterance in enumerate(chunk):
                if yodas:
                    clip = shard * shard_size + index
                    video = f"Yt-{clip // 3:05d}_Qz"  # 11 characters, like a YouTube id
                    key = f"EN_{video}_W{clip % 3:06d}"
                    speaker = f"EN_{video}_SPEAKER_{clip % 3 % 2:02d}"
                    fields = {"_id": key, "phone_count": len(utterance.text) // 2}
                else:
                    batch = f"EN_B{shard // 10:05d}"
                    speaker = f"{batch}_S{shard % 10 + 10 * (index // 4):05d}"
                    key = f"{speaker}_W{index % 4:06d}"
                    fields = {"id": key, "wav": f"{batch}/{speaker}/mp3/{key}.mp3"}
                fields |= {
                    "text": " " + utterance.text,
                    "duration": round(utterance.duration_s, 3),
                    "speaker": speaker,
                    "language": utterance.language,
                    "dnsmos": 3.2 + 0.01 * index,
                }
                add_member(archive, f"{key}.mp3", utterance.audio)
                add_member(archive, f"{key}.json", json.dumps(fields).encode())
        paths.append(path)
    return paths


YODAS2_RATE = 24_000


def write_yodas2(root: Path, utterances: list[SampleUtterance], subset: str = "en000", per_recording: int = 4,
                 gap_ms: int = 700, silent_recordings: int = 0) -> list[Path]:
    """A YODAS2 subset: recordings of `per_recording` utterances joined by silence, two per archive,
    plus `silent_recordings` per archive whose `text` is `{}`; returns the audio archives.

    Audio ids look like YouTube's (`Vid000-00x`: '-' inside); utterance ids are
    `<audio_id>-<index:05d>-<start_cs:08d>-<end_cs:08d>`, each utterance starting on a 10 ms boundary.
    """
    subset_dir = root / "data" / subset
    for folder in ("audio", "text", "duration"):
        (subset_dir / folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for number, chunk in _chunks(utterances, per_recording * 2):
        entries, durations = [], []
        archive_path = subset_dir / "audio" / f"{number:08d}.tar.gz"
        groups = [group for _, group in _chunks(chunk, per_recording)] + [[]] * silent_recordings
        with tarfile.open(archive_path, "w:gz") as archive:
            for recording, group in enumerate(groups):
                audio_id = f"Vid{number:03d}-{recording:02d}x"
                samples, texts = _recording(audio_id, group, gap_ms)
                add_member(archive, f"./{audio_id}.wav", _wav(samples, YODAS2_RATE))
                entries.append({"audio_id": audio_id, "text": texts})
                durations.append(f"{audio_id} {len(samples) / YODAS2_RATE:.2f}")
        (subset_dir / "text" / f"{number:08d}.json").write_text(json.dumps(entries))
        (subset_dir / "duration" / f"{number:08d}.txt").write_text("\n".join(durations) + "\n")
        paths.append(archive_path)
    return paths


def _recording(audio_id: str, group: list[SampleUtterance], gap_ms: int) -> tuple[np.ndarray, dict[str, str]]:
    """The utterances joined by `gap_ms` of silence (just silence when there are none), and their
    texts by utterance id."""
    rate = YODAS2_RATE
    pieces, texts, length = [], {}, 0
    for index, utterance in enumerate(group):
        decoded = audio.decode(utterance.audio, rate)
        # utterance ids carry centiseconds: start each utterance on a 10 ms boundary
        start_ms = -(-(length * 1000 // rate + gap_ms) // 10) * 10
        end_ms = -(-(start_ms + decoded.duration_ms) // 10) * 10
        texts[f"{audio_id}-{index:05d}-{start_ms // 10:08d}-{end_ms // 10:08d}"] = utterance.text
        pieces += [np.zeros(start_ms * rate // 1000 - length, np.float32), decoded.samples]
        length = start_ms * rate // 1000 + len(decoded.samples)
    return np.concatenate(pieces + [np.zeros(rate * gap_ms // 1000, np.float32)]), texts


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
