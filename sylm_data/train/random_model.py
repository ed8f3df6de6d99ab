"""Randomly initialised causal LMs in the Hugging Face format, for tests and benchmarks where real
weights cannot be downloaded: a Qwen2 architecture with a byte-level BPE tokenizer."""

from pathlib import Path

import torch

from sylm_data.sample.bpe import byte_level_bpe

# Qwen2 dimensions: a tiny one for tests; Qwen2.5-0.5B's (config.json on the hub) for benchmarks
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=320, tie_word_embeddings=False, max_position_embeddings=4096)
QWEN2_5_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151_936, tie_word_embeddings=True, max_position_embeddings=32768,
                    rope_theta=1_000_000.0, rms_norm_eps=1e-6)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def save_random_lm(folder: str | Path, dimensions: dict = TINY, corpus: list[str] = (), seed: int = 0,
                   tokenizer_size: int = 300) -> None:
    """Model and tokenizer in `folder`; the embedding table keeps rows the tokenizer never uses
    when `vocab_size` exceeds the tokenizer (as Qwen's padded tables do)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    tokenizer = Qwen2TokenizerFast(tokenizer_object=byte_level_bpe(corpus, tokenizer_size, SPECIAL_TOKENS),
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if len(tokenizer) > dimensions["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than vocab_size {dimensions['vocab_size']}")
    config = Qwen2Config(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **dimensions)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
