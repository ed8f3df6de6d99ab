"""Regenerate the bundled sample: `python -m sylm_data.sample.build [OUT_DIR]`.

Each sentence is spoken by espeak-ng, resampled to 24 kHz and stored as MP3 (as Emilia ships
audio); espeak's WORD events give the reference word onsets. espeak sometimes speaks two words as
one unit ("on the") and reports one event: the reference then holds the first word only, each
reference word naming its position in the transcript (`index`).
"""

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import soundfile
import soxr

from sylm_data.sample import DATA_DIR
from sylm_data.sample.espeak import Espeak, Word

SAMPLE_RATE = 24_000

SENTENCES = [
    "The river ran past the old mill before it reached the sea.",
    "She kept a small notebook for every bird she saw in spring.",
    "Bright lanterns swung above the market as the evening grew cold.",
    "Our train left the station twenty minutes after midnight.",
    "He painted the fence green because the neighbours asked him to.",
    "A quiet wind moved through the tall grass on the hill.",
    "Please bring two apples, a loaf of bread, and some cheese.",
    "The children built a castle of sand that the tide washed away.",
    "Every morning the baker opened his shop at exactly six.",
    "They argued about the map until the rain began to fall.",
    "Music drifted from an open window across the empty square.",
    "The doctor said the fever would pass within a few days.",
    "Snow covered the roofs of the village by early December.",
    "We counted seven boats sailing slowly toward the harbour.",
    "Her grandfather told stories about ships and distant islands.",
    "The library stays open late on Thursdays during the exams.",
    "A black cat slept on the warm stones beside the door.",
    "Turn left at the bridge and follow the road to the farm.",
    "The engineer checked every wire before switching on the power.",
    "Clouds gathered over the mountains and hid the morning sun.",
    "Fresh coffee and warm bread made the kitchen smell wonderful.",
    "The museum keeps a golden crown from the twelfth century.",
    "Nobody noticed the letter hidden under the heavy carpet.",
    "At noon the whole town gathered to watch the parade.",
]
VOICES = [("en-us", 165), ("en", 150), ("en-us+f3", 175)]


def reference_words(text: str, events: list[Word]) -> list[dict]:
    """Transcript words ([\w']+) that an espeak WORD event starts in, with their index and onset."""
    spans = [match.span() for match in re.finditer(r"[\w']+", text)]
    words = []
    for event in events:
        index = next(i for i, (start, end) in enumerate(spans) if start <= event.char_offset < end)
        words.append({"text": text[slice(*spans[index])], "index": index, "start_ms": event.start_ms})
    return words


def build(out_dir: Path) -> None:
    engine = Espeak()
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    manifest, reference = [], []
    for index, text in enumerate(SENTENCES):
        voice, rate = VOICES[index % len(VOICES)]
        speech = engine.synthesize(text, voice, rate)
        samples = soxr.resample(speech.samples.astype(np.float32) / 32768, speech.sample_rate, SAMPLE_RATE)
        key = f"espeak-{index:04d}"
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, SAMPLE_RATE, format="MP3", bitrate_mode="VARIABLE", compression_level=0.8)
        (out_dir / "audio" / f"{key}.mp3").write_bytes(buffer.getvalue())
        manifest.append(
            {"id": key, "audio": f"audio/{key}.mp3", "text": text, "language": "en", "speaker": voice}
        )
        reference.append({"id": key, "words": reference_words(text, speech.words)})
    for name, rows in (("manifest.jsonl", manifest), ("reference.jsonl", reference)):
        (out_dir / name).write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR)
