"""Randomly initialised models saved exactly the way their releases are saved, for tests and
benchmarks where real weights cannot be downloaded: the Qwen3 forced aligner (model + processor),
a SylReg checkpoint (data2vec 2.0 audio + codebook) and Qwen2-style causal LMs, all with a
byte-level BPE trained on a few sentences. Their outputs are noise; their formats are the real ones."""

import json
from pathlib import Path

import torch

from sylm_data.units import sylreg


def byte_level_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str]):
    """A `tokenizers.Tokenizer` in Qwen2's style (byte-level, no prefix space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(corpus) or ["the quick brown fox jumps over the lazy dog"], trainer)
    return bpe


ALIGNER_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_pad|>", "<|audio_end|>", "<timestamp>"]
# The aligner's prompt: the audio, then every word followed by its start and end markers.
ALIGNER_CHAT_TEMPLATE = (
    "{%- for message in messages -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'audio' -%}<|audio_start|><|audio_pad|><|audio_end|>"
    "{%- elif content['type'] == 'text' -%}{{ content['text'] }}<timestamp><timestamp>"
    "{%- endif -%}{%- endfor -%}{%- endfor -%}"
)
ALIGNER_TINY = {
    "audio": dict(encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16, output_dim=32,
                  downsample_hidden_size=8),
    "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16),
}
# Qwen3-ForcedAligner-0.6B's dimensions (for benchmarks with random weights)
ALIGNER_0_6B = {
    "audio": dict(encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096, d_model=1024, output_dim=1024,
                  downsample_hidden_size=480),
    "text": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151_936),
}


def save_random_aligner(folder, dimensions: dict = ALIGNER_TINY, seed: int = 0, corpus: list[str] = ()) -> None:
    """A randomly initialised forced aligner in the released format (model + processor), for tests
    and benchmarks where the weights cannot be downloaded. Its timings are noise."""
    from transformers import (
        Qwen2TokenizerFast,
        Qwen3ASRConfig,
        Qwen3ASRFeatureExtractor,
        Qwen3ASRForTokenClassification,
    )
    from transformers.models.qwen3_asr.processing_qwen3_asr import Qwen3ASRProcessor

    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=byte_level_bpe(corpus, 512, ALIGNER_SPECIAL_TOKENS), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                              "audio_eos_token": "<|audio_end|>"},
    )
    processor = Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer, chat_template=ALIGNER_CHAT_TEMPLATE)
    token = tokenizer.convert_tokens_to_ids
    config = Qwen3ASRConfig(
        audio_config=dict(num_mel_bins=128, **dimensions["audio"]),
        text_config={"vocab_size": len(tokenizer), "max_position_embeddings": 65536, **dimensions["text"]},
        audio_token_id=token("<|audio_pad|>"), timestamp_token_id=token("<timestamp>"),
        pad_token_id=token("<|endoftext|>"), eos_token_id=[token("<|im_end|>")], num_labels=5000,
    )
    torch.manual_seed(seed)
    # as transformers' conversion script writes the release: bf16 weights, 5000 labels, a bias-free score
    Qwen3ASRForTokenClassification(config).to(torch.bfloat16).save_pretrained(folder)
    processor.save_pretrained(folder)


SYLREG_TINY = {"embed_dim": 32, "num_heads": 4, "depth": 8, "prenet_depth": 2, "conv_dims": 32, "clusters": 64, "units": 16}
SYLREG_BASE = {"embed_dim": 768, "num_heads": 12, "depth": 8, "prenet_depth": 4, "conv_dims": 512, "clusters": 24576, "units": 8192}


def save_random_sylreg(folder: str | Path, size: dict = SYLREG_TINY, seed: int = 0) -> Path:
    """A randomly initialised checkpoint in the release's layout (data2vec 2.0 audio + codebook), for tests and benchmarks."""
    torch.manual_seed(seed)
    channels = size["conv_dims"]
    config = {
        "architectures": ["SylRegForSyllableDiscovery"], "_name": "data2vec_multi", "torch_dtype": "float32",
        "depth": size["depth"], "num_heads": size["num_heads"], "embed_dim": size["embed_dim"], "mlp_ratio": 4.0,
        "norm_eps": 1e-5, "norm_affine": True,
        "modalities": {"audio": {
            "prenet_depth": size["prenet_depth"], "use_alibi_encoder": True, "num_alibi_heads": size["num_heads"],
            "extractor_mode": "layer_norm", "conv_pos_width": 95, "conv_pos_groups": 16, "conv_pos_depth": 5,
            "feature_encoder_spec": f"[({channels}, 10, 5)] + [({channels}, 3, 2)] * 4 + [({channels},2,2)] + [({channels},2,2)]",
        }},
    }
    network = sylreg.Data2VecAudio(config)
    with torch.no_grad():  # LayerNorm gains near 1 keep random features from collapsing
        for name, parameter in network.named_parameters():
            if parameter.dim() == 1 and name.endswith("weight"):
                parameter.uniform_(0.8, 1.2)
    state = {sylreg.PREFIX + name: tensor.contiguous() for name, tensor in network.state_dict().items()}
    state[sylreg.CENTROIDS] = torch.randn(size["clusters"], size["embed_dim"])
    state[sylreg.MAPPING] = torch.randint(0, size["units"], (size["clusters"],), dtype=torch.int32)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / sylreg.CONFIG_FILE).write_text(json.dumps(config, indent=1))
    from safetensors.torch import save_file

    save_file(state, str(folder / sylreg.WEIGHT_FILES[0]))
    return folder


# Qwen2 dimensions: a tiny one for tests; Qwen2.5-0.5B's (config.json on the hub) for benchmarks
LM_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=320, tie_word_embeddings=False, max_position_embeddings=4096)
QWEN2_5_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151_936, tie_word_embeddings=True, max_position_embeddings=32768,
                    rope_theta=1_000_000.0, rms_norm_eps=1e-6)
LM_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def save_random_lm(folder: str | Path, dimensions: dict = LM_TINY, corpus: list[str] = (), seed: int = 0,
                   tokenizer_size: int = 300) -> None:
    """Model and tokenizer in `folder`; the embedding table keeps rows the tokenizer never uses
    when `vocab_size` exceeds the tokenizer (as Qwen's padded tables do)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    tokenizer = Qwen2TokenizerFast(tokenizer_object=byte_level_bpe(corpus, tokenizer_size, LM_SPECIAL_TOKENS),
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if len(tokenizer) > dimensions["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than vocab_size {dimensions['vocab_size']}")
    config = Qwen2Config(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **dimensions)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
