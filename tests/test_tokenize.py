"""codebook + tokenize: MFCC units on the espeak-ng sample through Ray, HF encoders, codebook checks."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import runner
from sylm_data.pipeline.stage import StageConfigError
from sylm_data.sample import MANIFEST
from sylm_data.schemas.codebook import CodebookManifest
from sylm_data.stages import tokenize
from sylm_data.units.encoders import MfccEncoder
from sylm_data.units.features import FeatureConfig, check_encoder
from sylm_data.units.syllables import Segmenter
from tests.conftest import read_parquet, serial

pytestmark = pytest.mark.usefixtures("ray_session")


def make_config(out, *overrides):
    cfg = config_module.load(None, ["align.backend='pocketsphinx'", "codebook.clusters=48", "codebook.encoder='mfcc'", "tokenize.encoder='mfcc'",
                                    f"tokenize.codebook='{out / 'codebook'}'", *overrides])
    cfg.stages["ingest"].source = "manifest"
    cfg.stages["ingest"].inputs = [str(MANIFEST)]
    return cfg


@pytest.fixture(scope="module")
def tokenized_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = make_config(out)
    quiet = {"log": lambda line: None}
    runner.run(cfg, ["ingest", "align"], str(out), **quiet)
    fitted = runner.run(cfg, ["codebook"], str(out), **quiet)
    tokenized = runner.run(cfg, ["tokenize"], str(out), **quiet)
    return out, fitted.record, tokenized.record


def test_the_codebook_is_fitted_and_described(tokenized_run):
    out, fitted, _ = tokenized_run
    manifest = CodebookManifest.load(out / "codebook")
    assert (manifest.encoder, manifest.layer, manifest.clusters, manifest.dims) == ("mfcc", 0, 48, 39)
    assert manifest.samples > 48 and manifest.inertia > 0
    assert fitted["finalized"]["codebook"] == manifest.id


def test_units_are_syllable_rate_and_their_spans_tile_the_audio(tokenized_run):
    out, _, record = tokenized_run
    rows = read_parquet(out / "tokenize").to_pylist()
    assert record["this_run"][0]["out"] == len(rows) >= 22
    seconds = sum(row["duration_ms"] for row in rows) / 1000
    rate = sum(len(row["units"]) for row in rows) / seconds
    assert 3 <= rate <= 8, rate
    for row in rows:
        assert all(0 <= unit < 48 for unit in row["units"])
        assert all(a != b for a, b in zip(row["units"], row["units"][1:]))  # runs were merged
        starts, ends = row["unit_start_ms"], row["unit_end_ms"]
        assert starts[0] == 0 and row["duration_ms"] - 20 < ends[-1] <= row["duration_ms"]
        assert all(end == start for end, start in zip(ends, starts[1:]))  # contiguous, no gaps or overlaps
        assert row["words"] and row["tokenizer"].startswith("mfcc:0:")


def test_a_codebook_of_another_encoder_or_segmentation_is_refused(tokenized_run, tmp_path):
    out, _, _ = tokenized_run
    with pytest.raises(runner.RunError, match="fitted on mfcc layer 0, not hf/x layer 3"):
        runner.run(make_config(out, "tokenize.encoder='hf'", "tokenize.model='x'", "tokenize.layer=3"),
                   ["tokenize"], str(tmp_path / "other"))
    with pytest.raises(runner.RunError, match="fitted with segmentation"):
        runner.run(make_config(out, "tokenize.sec_per_syllable=0.2"), ["tokenize"], str(tmp_path / "other"))
    with pytest.raises(runner.RunError, match="run --stage codebook"):
        runner.run(make_config(tmp_path), ["tokenize"], str(tmp_path / "other"))


def test_mfcc_frames_are_50_hz():
    (features,) = MfccEncoder().encode([np.zeros(16_000 * 2 + 100, np.float32) + 0.01])
    assert features.shape == (101, 39)


def test_a_transformers_hubert_layer_feeds_the_same_segmenter(tmp_path):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    HubertModel(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    segmenter = Segmenter(FeatureConfig(encoder="hf", model=str(tmp_path), layer=2, device="cpu"))
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 16_000 * seconds).astype(np.float32) for seconds in (3, 1)]
    (long_features, long_ends), (short_features, short_ends) = segmenter(waves)
    assert long_features.shape == (149, 32) and short_features.shape == (49, 32)  # 50 Hz, padding trimmed
    assert long_ends[-1] == 149 and short_ends[-1] == 49
    with pytest.raises(ValueError, match="layers 0..2"):
        Segmenter(FeatureConfig(encoder="hf", model=str(tmp_path), layer=5, device="cpu"))
    # the driver's preflight says the same without loading the weights
    check_encoder(FeatureConfig(encoder="hf", model=str(tmp_path), layer=2))
    with pytest.raises(StageConfigError, match="layers 0..2"):
        check_encoder(FeatureConfig(encoder="hf", model=str(tmp_path), layer=5))
    with pytest.raises(StageConfigError, match="cannot load encoder"):
        check_encoder(FeatureConfig(encoder="hf", model=str(tmp_path / "missing")))


def test_an_agglomerated_codebook_names_fewer_units(tokenized_run, tmp_path):
    import shutil

    from sylm_data.stages import codebook as codebook_stage

    out, _, _ = tokenized_run
    folder = tmp_path / "codebook"
    shutil.copytree(out / "codebook", folder, ignore=shutil.ignore_patterns("*.safetensors", "manifest.json"))
    cfg = make_config(tmp_path, "codebook.agglomerate_to=12")
    summary = codebook_stage.fit(cfg.stages["codebook"], folder, serial)
    manifest = CodebookManifest.load(folder)
    assert (manifest.clusters, manifest.units) == (48, 12) and summary["codebook"] == manifest.id
    tokenizer = tokenize.Tokenizer(cfg.stages["tokenize"])
    assert tokenizer.mapping.shape == (48,) and set(tokenizer.mapping.tolist()) == set(range(12))
    rows = read_parquet(out / "align").slice(0, 4)
    ingested = read_parquet(out / "ingest")  # the audio is stored once, in ingest's rows
    audio_of = dict(zip(ingested["id"].to_pylist(), ingested["audio"].to_pylist()))
    rows = rows.append_column("audio", pa.array([audio_of[i] for i in rows["id"].to_pylist()], pa.large_binary()))
    envelope = {"partition": ["p"] * 4, "partition_total": [0] * 4, "reject_stage": [None] * 4,
                "reject_reason": [None] * 4, "reject_detail": [None] * 4}
    for name, values in envelope.items():
        rows = rows.append_column(name, pa.array(values, type=pa.int64() if name == "partition_total" else pa.string()))
    named = tokenizer(rows)["units"].to_pylist()
    assert all(0 <= unit < 12 for units in named for unit in units)


def test_align_and_tokenize_store_no_audio_and_tokenize_joins_it_from_ingest(tokenized_run, tmp_path):
    import shutil

    out, _, record = tokenized_run
    for stage in ("align", "tokenize"):
        assert "audio" not in read_parquet(out / stage).column_names
    assert record["this_run"][-1]["out"] > 0  # tokenize decoded the audio it joined by id
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("tokenize", "runs", ".lock"))
    shutil.rmtree(copy / "ingest")
    with pytest.raises(runner.RunError, match=r"ingest lacks the committed rows of .* hold their audio"):
        runner.run(make_config(copy), ["tokenize"], str(copy), log=lambda line: None)
