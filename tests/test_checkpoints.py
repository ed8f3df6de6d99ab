"""Every model loader refuses a checkpoint whose weight names do not fit, in one line, instead of
running with the random weights transformers would put in their place."""

import json

import pytest
from safetensors.torch import load_file, save_file

from sylm_data.align.qwen3 import ModelLoadError, Qwen3Aligner
from sylm_data.checkpoints import WeightsMismatch, from_pretrained_strict
from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import runner
from sylm_data.sample import MANIFEST
from sylm_data.train import t2t
from sylm_data.units.encoders import HfEncoder
from tests.random_models import LM_TINY, save_random_aligner, save_random_lm


def rename_weights(folder, old: str, new: str) -> None:
    path = folder / "model.safetensors"
    weights = load_file(str(path))
    save_file({name.replace(old, new): tensor for name, tensor in weights.items()}, str(path), metadata={"format": "pt"})


def test_the_aligner_refuses_renamed_weights(tmp_path):
    save_random_aligner(tmp_path)
    Qwen3Aligner(str(tmp_path), device="cpu")
    rename_weights(tmp_path, "model.language_model.", "thinker.model.")  # the authors' unconverted names
    with pytest.raises(ModelLoadError, match=r"do not fit Qwen3ASRForTokenClassification: missing \d+ .*unexpected") as error:
        Qwen3Aligner(str(tmp_path), device="cpu")
    assert "\n" not in str(error.value)


def test_an_hf_encoder_refuses_renamed_weights_but_not_an_unused_ctc_head(tmp_path):
    from transformers import HubertConfig, HubertForCTC, Wav2Vec2FeatureExtractor

    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=12,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertForCTC(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    assert HfEncoder(str(tmp_path), 2).dims == 32  # the CTC head is left unused
    rename_weights(tmp_path, "encoder.layers.1.", "encoder.layer.1.")
    with pytest.raises(WeightsMismatch, match="missing .*encoder.layers.1"):
        HfEncoder(str(tmp_path), 2)


def test_language_models_refuse_renamed_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    save_random_lm(tmp_path, LM_TINY | {"tie_word_embeddings": True})
    from_pretrained_strict(AutoModelForCausalLM, tmp_path)  # a tied table is not missing
    (tmp_path / t2t.META).write_text(json.dumps({"unit_vocab": 8}))
    t2t.load(str(tmp_path))
    rename_weights(tmp_path, "model.norm.", "model.final_norm.")
    with pytest.raises(t2t.T2TError, match=r"missing 1 \(model.norm.weight\); unexpected 1 \(model.final_norm.weight\)"):
        t2t.load(str(tmp_path))



@pytest.mark.usefixtures("ray_session")
def test_renamed_aligner_weights_stop_a_run_in_one_line(tmp_path):
    save_random_aligner(tmp_path / "aligner")
    rename_weights(tmp_path / "aligner", "model.language_model.", "thinker.model.")
    cfg = config_module.load(None, [f"align.model={str(tmp_path / 'aligner')!r}", "align.device='cpu'"])
    cfg.stages["ingest"].source = "manifest"
    cfg.stages["ingest"].inputs = [str(MANIFEST)]
    with pytest.raises(runner.RunError, match=r"^\[align\] cannot load the aligner .* do not fit .*pocketsphinx$") as error:
        runner.run(cfg, ["ingest", "align"], str(tmp_path / "out"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out" / "align").exists()
