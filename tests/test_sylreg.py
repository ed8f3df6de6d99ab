"""The SylReg encoder: checkpoints in the release's layouts, batch-invariant features and units, the
release's unit path (windowed-sinc resampling, the checkpoint's dtype, standardized segment means),
the released codebook through the tokenize stage, and clear errors for checkpoints that do not fit."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import runner
from sylm_data.pipeline.stage import StageConfigError
from sylm_data.sample import MANIFEST
from sylm_data.units import assign, sylreg
from sylm_data.units.resample import resample
from sylm_data.units.features import FeatureConfig, check_encoder
from sylm_data.units.syllables import Segmenter
from tests.conftest import read_parquet
from tests.random_models import save_random_sylreg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_sylreg(tmp_path_factory.mktemp("sylreg"))


def waves(*lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.normal(size=n)).astype(np.float32) for n in lengths]


def test_features_are_50_hz_and_a_batch_gives_what_single_items_give(checkpoint):
    encoder = sylreg.SylRegEncoder(str(checkpoint), 6)
    inputs = waves(16_000, 40_000, 7_000)
    batch = encoder.encode(inputs)
    assert [len(item) for item in batch] == [49, 124, 21]  # (samples - 400) // 320 + 1
    for together, alone in zip(batch, (encoder.encode([wave])[0] for wave in inputs)):
        assert torch.allclose(together, alone, atol=1e-4)
    assert encoder.codebook_id.startswith(f"sylreg/{checkpoint}:6:k64:")


def test_the_checkpoint_is_written_as_the_release_is(checkpoint):
    state = load_file(str(checkpoint / "model.safetensors"))
    assert state["quantizer1"].dtype == torch.float32 and state["quantizer1"].shape == (64, 32)
    assert state["quantizer2"].dtype == torch.int32 and state["quantizer2"].shape == (64,)
    assert all(name.startswith("model.") for name in state if not name.startswith("quantizer"))
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["architectures"] == ["SylRegForSyllableDiscovery"]


def sylreg_units(segmenter, waves):
    """(units, end frames) per wave, as the tokenize stage names them."""
    out = []
    for features, ends in segmenter(waves):
        names = assign.assign(segmenter.pool(features, ends), segmenter.encoder.centroids, segmenter.encoder.mapping)
        out.append(assign.deduplicate(names, ends, 1)[::2])
    return out


def test_a_batch_gives_the_units_of_one_utterance_at_a_time(checkpoint):
    inputs = waves(33_680, 16_000, 43_280, 86_480, 7_000, seed=3)  # 105, 49, 135, 270 and 21 frames
    together = sylreg_units(Segmenter(FeatureConfig(model=str(checkpoint), device="cpu")), inputs)
    alone = sylreg_units(Segmenter(FeatureConfig(model=str(checkpoint), device="cpu", batch_size=1)), inputs)
    assert together == alone
    assert all(len(names) >= 1 for names, _ in together)


def test_segment_means_are_standardized_before_the_nearest_centroid(checkpoint):
    segmenter = Segmenter(FeatureConfig(model=str(checkpoint), device="cpu"))
    [(features, ends)] = segmenter(waves(40_000, seed=5))
    means = np.stack([features[start:end].numpy().astype(np.float64).mean(0)
                      for start, end in zip([0, *ends[:-1]], ends)])
    expected = (means - means.mean(1, keepdims=True)) / means.std(1, ddof=1, keepdims=True)
    pooled = segmenter.pool(features, ends)
    assert np.allclose(pooled.numpy(), expected, atol=1e-5)
    centroids = segmenter.encoder.centroids.numpy().astype(np.float64)
    nearest = ((expected[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert assign.assign(pooled, segmenter.encoder.centroids, segmenter.encoder.mapping) == \
        segmenter.encoder.mapping[torch.from_numpy(nearest)].tolist()
    plain = Segmenter(FeatureConfig(encoder="mfcc", device="cpu"))
    [(mfcc, mfcc_ends)] = plain(waves(40_000, seed=5))
    assert torch.equal(plain.pool(mfcc, mfcc_ends), assign.pool(mfcc, mfcc_ends))  # other encoders: plain means


def windowed_sinc(x: np.ndarray, source: int, target: int, j: int) -> float:
    """Output sample j straight from the formula, summed over every input sample (float64)."""
    cutoff = 0.99 * min(source, target)
    t = cutoff * (np.arange(len(x)) / source - j / target)
    window = np.where(np.abs(t) <= 6, np.cos(np.pi * t / 12) ** 2, 0.0)
    return float((x * np.sinc(t) * window).sum() * cutoff / source)


@pytest.mark.parametrize("source", [44_100, 22_050, 48_000, 24_000, 8_000, 11_025])
def test_resampling_is_the_windowed_sinc_interpolation(source):
    x = waves(2_001, seed=source)[0]
    y = resample(x, source, 16_000)
    assert y.dtype == np.float32 and len(y) == math.ceil(2_001 * 16_000 / source)
    for j in (0, 1, 7, len(y) // 2, len(y) - 2, len(y) - 1):
        assert y[j] == pytest.approx(windowed_sinc(x.astype(np.float64), source, 16_000, j), abs=1e-6)
    assert resample(x, 16_000, 16_000) is x


def test_the_encoder_runs_in_the_checkpoint_dtype_unless_bfloat16_is_asked_for(checkpoint, tmp_path):
    wave = waves(16_000, seed=7)[0]
    config = json.loads((checkpoint / "config.json").read_text())
    state = {name.removeprefix("model."): tensor for name, tensor in load_file(str(checkpoint / "model.safetensors")).items()
             if name.startswith("model.")}

    def plain_forward(dtype):
        network = sylreg.Data2VecAudio(config)
        network.load_state_dict(state)
        network = network.to(dtype).eval()
        with torch.no_grad():
            hidden, _ = network(torch.from_numpy(wave)[None].to(dtype), torch.tensor([len(wave)]), 6)
        return hidden[0].float()

    default = sylreg.SylRegEncoder(str(checkpoint), 6)
    assert default.dtype == torch.float32
    assert torch.allclose(default.encode([wave])[0], plain_forward(torch.float32), atol=1e-6)
    opted = sylreg.SylRegEncoder(str(checkpoint), 6, dtype="bfloat16")
    assert {parameter.dtype for parameter in opted.network.parameters()} == {torch.bfloat16}
    assert torch.equal(opted.encode([wave])[0], plain_forward(torch.bfloat16))

    saved_in_bf16 = tmp_path / "bf16"
    saved_in_bf16.mkdir()
    (saved_in_bf16 / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "torch_dtype"}))
    weights = load_file(str(checkpoint / "model.safetensors"))
    save_file({name: tensor.bfloat16() if name.startswith("model.") else tensor for name, tensor in weights.items()},
              str(saved_in_bf16 / "model.safetensors"))
    assert sylreg.SylRegEncoder(str(saved_in_bf16), 6).dtype == torch.bfloat16  # no torch_dtype: the weights'
    assert sylreg.SylRegEncoder(str(saved_in_bf16), 6, dtype="float32").dtype == torch.float32
    with pytest.raises(StageConfigError, match="other encoders take auto"):
        FeatureConfig(encoder="mfcc", dtype="bfloat16").resolved()
    with pytest.raises(StageConfigError, match="float16"):
        FeatureConfig(dtype="float16").resolved()


def test_attention_in_row_blocks_equals_plain_softmax_attention():
    torch.manual_seed(0)
    attention = sylreg._Attention(16, 4)
    x = torch.randn(2, 11, 16)
    slopes = torch.tensor(sylreg.alibi_slopes(4))
    distance = -(torch.arange(11)[None, :] - torch.arange(11)[:, None]).abs().float()
    padding = torch.zeros(2, 1, 1, 11)
    padding[1, ..., 7:] = -math.inf

    def bias(rows):
        return slopes[:, None, None] * distance[rows][None] + padding

    q, k, v = attention.qkv(x).reshape(2, 11, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2 + bias(slice(0, 11)), dim=-1)
    plain = attention.proj((weights @ v).transpose(1, 2).reshape(2, 11, 16))
    assert torch.allclose(attention(x, bias, query_rows=3), plain, atol=1e-5)


def test_alibi_slopes_follow_the_geometric_rule():
    assert sylreg.alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]
    twelve = sylreg.alibi_slopes(12)
    assert twelve[:8] == [2.0 ** -i for i in range(1, 9)]
    assert twelve[8:] == pytest.approx([2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5])


def test_the_feature_encoder_spec_is_read_without_eval():
    spec = sylreg.conv_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]")
    assert spec == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(sylreg.CheckpointError, match="unsupported"):
        sylreg.conv_spec("[__import__('os').getpid()]")


def test_checkpoints_that_do_not_fit_are_refused_clearly(checkpoint, tmp_path):
    state = load_file(str(checkpoint / "model.safetensors"))
    config = (checkpoint / "config.json").read_text()

    def variant(name, changed):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(config)
        save_file(changed, str(folder / "model.safetensors"))
        return str(folder)

    no_codebook = variant("no_codebook", {k: v for k, v in state.items() if k != "quantizer2"})
    with pytest.raises(sylreg.CheckpointError, match="lacks the codebook"):
        sylreg.SylRegEncoder(no_codebook, 6)
    missing_block = variant("missing", {k: v for k, v in state.items() if not k.startswith("model.blocks.7.")})
    with pytest.raises(sylreg.CheckpointError, match="do not fit"):
        sylreg.SylRegEncoder(missing_block, 6)
    with pytest.raises(sylreg.CheckpointError, match="layers 0..7, not 8"):
        sylreg.SylRegEncoder(str(checkpoint), 8)
    with pytest.raises(StageConfigError, match="cannot load encoder"):
        check_encoder(FeatureConfig(model=str(tmp_path / "absent")))
    with pytest.raises(StageConfigError, match="layers 0..7, not 9"):
        check_encoder(FeatureConfig(model=str(checkpoint), layer=9))
    with pytest.raises(StageConfigError, match="needs a model"):
        check_encoder(FeatureConfig(encoder="hf"))


def test_a_hubert_layout_checkpoint_reads_through_transformers(tmp_path):
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=32, num_hidden_layers=7, num_attention_heads=4, intermediate_size=64,
                          conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    torch.manual_seed(0)
    model = HubertModel(config).eval()
    state = {f"model.{name}": tensor.contiguous() for name, tensor in model.state_dict().items()}
    state |= {"quantizer1": torch.randn(20, 32), "quantizer2": torch.randint(0, 5, (20,), dtype=torch.int32)}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    encoder = sylreg.SylRegEncoder(str(tmp_path), 6)
    wave = waves(16_000)[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states[6][0]
    assert torch.allclose(encoder.encode([wave])[0], expected, atol=1e-5)


def test_segments_keep_at_least_two_after_merging(checkpoint):
    segmenter = Segmenter(FeatureConfig(model=str(checkpoint), merge_threshold=-1.0, device="cpu"))
    for _, ends in segmenter(waves(16_000, 30_000)):
        assert len(ends) == 2  # everything similar enough to merge, but the release stops at two


@pytest.mark.usefixtures("ray_session")
def test_tokenize_with_the_released_codebook(checkpoint, tmp_path):
    cfg = config_module.load(None, ["align.backend='pocketsphinx'", f"tokenize.model='{checkpoint}'"])
    cfg.stages["ingest"].source = "manifest"
    cfg.stages["ingest"].inputs = [str(MANIFEST)]
    quiet = {"log": lambda line: None}
    runner.run(cfg, ["ingest", "align", "tokenize"], str(tmp_path), **quiet)
    rows = read_parquet(tmp_path / "tokenize").to_pylist()
    assert len(rows) >= 22
    for row in rows:
        assert row["tokenizer"].startswith(f"sylreg/{checkpoint}:6:k64:")
        assert row["units"] and all(0 <= unit < 16 for unit in row["units"])
        assert all(a != b for a, b in zip(row["units"], row["units"][1:]))
        assert row["unit_start_ms"][0] == 0 and row["unit_end_ms"][-1] <= row["duration_ms"]
