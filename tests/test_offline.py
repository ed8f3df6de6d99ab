"""No hub: every hub download fails at once with its one-line advice, and what the hub cache holds
still loads. The hub is made unreachable by pointing its endpoint at a closed local port (this
works the same with or without a network), and the hub cache is a temporary folder laid out as
huggingface_hub lays it out."""

import json
import shutil
import socket
import time
from pathlib import Path

import huggingface_hub.constants
import pytest

from sylm_data import offline
from sylm_data.pipeline.stage import StageConfigError
from sylm_data.stages import align
from sylm_data.train import t2t
from sylm_data.units import sylreg
from sylm_data.units.features import FeatureConfig, check_encoder
from tests.random_models import save_random_aligner, save_random_sylreg

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_hub(tmp_path, monkeypatch) -> Path:
    """An unreachable hub and an empty hub cache (returned: models put there load offline)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    offline._reachable.cache_clear()
    yield cache
    offline._reachable.cache_clear()


def cache_model(cache: Path, repo_id: str, folder: Path) -> None:
    """`folder`'s files as the hub cache holds repo `repo_id` after a download."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_the_probe_tells_a_listening_endpoint_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert offline._reachable(f"http://127.0.0.1:{server.getsockname()[1]}", 1.0)
    started = time.monotonic()
    assert not offline._reachable(f"http://127.0.0.1:{closed_port()}", 1.0)
    assert not offline._reachable("https://no-such-host.invalid", 1.0)
    assert time.monotonic() - started < 2.5


def test_without_the_hub_every_loader_fails_at_once_with_its_advice(no_hub):
    from transformers import AutoConfig  # noqa: F401  (its import takes seconds: not what is timed)

    started = time.monotonic()
    with pytest.raises(StageConfigError, match=r"^cannot load the aligner 'Qwen/Qwen3-ForcedAligner-0.6B-hf' \(not in the "
                                               r"local hub cache, and the hub cannot be reached \(no network\)\);.*pocketsphinx$"):
        align.preflight(align.AlignConfig())
    assert time.monotonic() - started < 2  # huggingface_hub alone retries for ~30 s
    with pytest.raises(StageConfigError, match=f"cannot load encoder '{sylreg.HUB_ID}': .*not in the local hub cache"):
        check_encoder(FeatureConfig())  # SylReg, the default encoder
    with pytest.raises(StageConfigError, match="cannot load encoder 'facebook/hubert-base-ls960': not in the local hub cache"):
        check_encoder(FeatureConfig(encoder="hf", model="facebook/hubert-base-ls960"))
    with pytest.raises(t2t.T2TError, match="cannot load text-to-token model 'org/t2t': not in the local hub cache"):
        t2t.locate("org/t2t")
    assert time.monotonic() - started < 4


def test_without_the_hub_a_cached_model_still_loads(no_hub, tmp_path):
    save_random_aligner(tmp_path / "aligner", corpus=["the river ran past the old mill"])
    cache_model(no_hub, "org/aligner", tmp_path / "aligner")
    save_random_sylreg(tmp_path / "sylreg")
    cache_model(no_hub, "org/sylreg", tmp_path / "sylreg")
    (tmp_path / "t2t").mkdir()
    (tmp_path / "t2t" / t2t.META).write_text(json.dumps({"format": "sylm-data t2t", "unit_vocab": 8}))
    cache_model(no_hub, "org/t2t", tmp_path / "t2t")

    started = time.monotonic()
    align.preflight(align.AlignConfig(model="org/aligner"))
    aligner = align.Aligner(align.AlignConfig(model="org/aligner", device="cpu"))
    assert aligner.backend.id.startswith("qwen3/org/aligner@")
    check_encoder(FeatureConfig(model="org/sylreg"))
    assert sylreg.read_state_dict("org/sylreg")
    folder, meta = t2t.locate("org/t2t")
    assert folder.name == COMMIT and meta["unit_vocab"] == 8
    assert time.monotonic() - started < 20
