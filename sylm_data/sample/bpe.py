"""A byte-level BPE trained on a few sentences: the tokenizer of the randomly initialised models
that tests and benchmarks build where a real one cannot be downloaded."""


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
