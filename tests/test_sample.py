"""The bundled sample: its generator (espeak-ng) and the committed files agree."""

import ctypes.util
import json
import re

import pytest

from sylm_data import audio
from sylm_data.sample import MANIFEST, REFERENCE, build


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


def test_the_committed_sample_matches_its_sentences_and_reference():
    manifest = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
    reference = {row["id"]: row["words"] for row in map(json.loads, REFERENCE.read_text().splitlines())}
    assert [entry["text"] for entry in manifest] == build.SENTENCES
    for entry in manifest:
        onsets = [word["start_ms"] for word in reference[entry["id"]]]
        transcript = words(entry["text"])
        indices = [word["index"] for word in reference[entry["id"]]]
        assert [word["text"] for word in reference[entry["id"]]] == [transcript[i] for i in indices]
        assert indices == sorted(set(indices)) and len(indices) >= len(transcript) - 2
        assert onsets == sorted(set(onsets))
        duration_ms = audio.decode((MANIFEST.parent / entry["audio"]).read_bytes()).duration_ms
        assert onsets[-1] < duration_ms - 100  # the last word starts well before the audio ends


@pytest.mark.skipif(ctypes.util.find_library("espeak-ng") is None, reason="needs Debian's espeak-ng (.ci/run installs it)")
def test_the_generator_rebuilds_the_sample(tmp_path):
    build.build(tmp_path)
    rebuilt = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [entry["id"] for entry in rebuilt] == [json.loads(line)["id"] for line in MANIFEST.read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "reference.jsonl").read_text().splitlines()]
    committed = [json.loads(line) for line in REFERENCE.read_text().splitlines()]
    for new, old in zip(reference, committed):
        assert [w["index"] for w in new["words"]] == [w["index"] for w in old["words"]]
        # espeak is deterministic for a given version; allow a little drift across versions
        assert all(abs(a["start_ms"] - b["start_ms"]) <= 50 for a, b in zip(new["words"], old["words"]))
