"""The text-to-token model: a decoder-only transformer that reads a span's text and writes its units.

A sequence is the text's UTF-8 bytes, a separator, the units, EOS; the loss covers the units and
EOS only. Bytes need no tokenizer download and serve any language. The model is a transformers
Llama built from a preset (random init) or loaded from a folder this trainer wrote, which also
holds `t2t.json`: the unit vocabulary, the tokenizer id the units belong to, and the most units
per word seen in training (generation stops there).
"""

import inspect
import json
import math
from pathlib import Path

import torch

from sylm_data import offline
from sylm_data.align.split import MissingExtra, split_words
from sylm_data.checkpoints import WeightsMismatch, from_pretrained_strict
from sylm_data.schemas import sample
from sylm_data.train import data

PAD, SEP, EOS = 256, 257, 258  # after the 256 byte values
FIRST_UNIT = 259
IGNORE = -100
META = "t2t.json"

PRESETS = {  # Llama dimensions; the default, t2t-base, has about 270M parameters with 8,192 units
    "t2t-tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "t2t-small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8),
    "t2t-base": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=20, num_attention_heads=16,
                     num_key_value_heads=16),
}


class T2TError(ValueError):
    pass


def new_model(preset: str, unit_vocab: int, max_positions: int = 4096):
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise T2TError(f"unknown text-to-token preset {preset!r}; presets: {', '.join(PRESETS)}")
    config = LlamaConfig(vocab_size=FIRST_UNIT + unit_vocab, bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD,
                         max_position_embeddings=max_positions, tie_word_embeddings=False, **PRESETS[preset])
    return LlamaForCausalLM(config)


def prompt(text: str) -> list[int]:
    return list(text.encode("utf-8")) + [SEP]


def render_pairs(document: dict) -> list[data.Document]:
    """A `pairs` sample (text, speech, text, speech, …) as one training document per pair, without
    cuts: a pair that does not fit the room left in a sequence starts the next one."""
    segments = document[sample.SEGMENTS]
    documents = []
    for text, speech in zip(segments[0::2], segments[1::2]):
        if text[sample.MODALITY] != sample.TEXT or speech[sample.MODALITY] != sample.SPEECH:
            raise T2TError(f"a pairs sample alternates text and speech, not {text[sample.MODALITY]}, {speech[sample.MODALITY]}")
        head = prompt(text[sample.TEXT])
        tail = [FIRST_UNIT + unit for unit in speech[sample.UNITS]] + [EOS]
        documents.append(data.Document(head + tail, [IGNORE] * len(head) + tail, []))
    return documents


def save_meta(folder: Path, unit_vocab: int, tokenizer: str, max_units_per_word: float, model_id: str) -> None:
    meta = {"format": "sylm-data t2t", "version": 1, "unit_vocab": unit_vocab, "tokenizer": tokenizer,
            "max_units_per_word": max_units_per_word, "id": model_id}
    (Path(folder) / META).write_text(json.dumps(meta, indent=1))


def locate(model: str) -> tuple[Path, dict]:
    """The folder of a text-to-token model (a local one, or a hub id fetched into the cache) and its meta."""
    folder = Path(model)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(model, local_files_only=offline.hub_offline()))
        except Exception as error:  # the hub's errors differ by version; the message says enough
            raise T2TError(f"cannot load text-to-token model {model!r}: {offline.reason(error, model)}") from None
    if not (folder / META).exists():
        raise T2TError(f"{model} is not a text-to-token model: no {META} (train one with `sylm-data train --task t2t`)")
    return folder, json.loads((folder / META).read_text())


def load(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, meta) from a folder the trainer wrote (OUTPUT/final) or a hub id."""
    from transformers import AutoModelForCausalLM

    folder, meta = locate(model)
    try:
        network = from_pretrained_strict(AutoModelForCausalLM, folder, dtype=dtype).to(device).eval()
    except WeightsMismatch as error:
        raise T2TError(str(error)) from None
    return network, meta


@torch.inference_mode()
def generate(model, texts: list[str], limits: list[int], temperature: float = 0.0, top_k: int = 0,
             seeds: list[int] | None = None) -> list[list[int]]:
    """Units for each text, batched with a KV cache: greedy, or sampled (temperature, top-k) from a
    generator seeded per text; at most `limits[i]` units (then EOS is forced)."""
    if not texts:
        return []
    device = model.device
    prompts = [prompt(text) for text in texts]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, tokens in enumerate(prompts):  # left padding: every prompt ends at the last column
        ids[row, width - len(tokens):] = torch.tensor(tokens)
        mask[row, width - len(tokens):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # transformers 5.2x names the KV cache `cache`, in and out (the old `past_key_values` warns, and goes in 5.40); 5.13 does not
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, logits = output[cache_name], output.logits[:, -1]
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
    allowed[FIRST_UNIT:] = True
    allowed[EOS] = True
    generators = None
    if temperature > 0:
        generators = [torch.Generator(device=device).manual_seed(seed) for seed in (seeds or range(len(texts)))]
    limit = torch.tensor(limits, device=device)
    produced = torch.zeros(len(texts), dtype=torch.long, device=device)
    finished = torch.zeros(len(texts), dtype=torch.bool, device=device)
    steps = []
    next_position = positions[:, -1] + 1
    for _ in range(int(limit.max()) + 1):
        scores = logits.float().masked_fill(~allowed, float("-inf"))
        scores[produced >= limit] = float("-inf")
        scores[produced >= limit, EOS] = 0.0
        token = _choose(scores, temperature, top_k, generators)
        token = torch.where(finished, torch.full_like(token, EOS), token)
        steps.append(token)
        finished |= token == EOS
        produced += (~finished).long()
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        output = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None],
                       use_cache=True, **{cache_name: cache})
        cache, logits = output[cache_name], output.logits[:, -1]
        next_position = next_position + 1
    chosen = torch.stack(steps, dim=1).tolist()
    return [[token - FIRST_UNIT for token in row[: row.index(EOS)]] for row in chosen]  # every row ends in EOS


def _choose(scores: torch.Tensor, temperature: float, top_k: int, generators) -> torch.Tensor:
    if generators is None:
        return scores.argmax(dim=-1)
    scores = scores / temperature
    if top_k:
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    cumulative = scores.softmax(dim=-1).cumsum(dim=-1)
    draws = torch.stack([torch.rand((), generator=g, device=scores.device) for g in generators])
    picked = torch.searchsorted(cumulative, (draws * cumulative[:, -1]).unsqueeze(-1)).squeeze(-1)
    return picked.clamp(max=scores.shape[-1] - 1)


def heldout_pairs(folder: Path, limit: int) -> list[tuple[str, list[int], str]]:
    """(text, units, language) pairs from a pairs shard folder (DIR/pairs-heldout), at most `limit`."""
    pairs = []
    for document in data.documents_in_order(data.open_folder(folder)):
        if document is None:
            continue
        content = json.loads(document)
        segments = content[sample.SEGMENTS]
        pairs += [(text[sample.TEXT], speech[sample.UNITS], content.get(sample.LANGUAGE) or "en")
                  for text, speech in zip(segments[0::2], segments[1::2])]
        if len(pairs) >= limit:
            return pairs[:limit]
    return pairs


@torch.inference_mode()
def evaluate(model, meta: dict, pairs: list[tuple[str, list[int], str]], batch: int = 32) -> dict:
    """Teacher-forced unit accuracy and perplexity over the units and EOS, and the ratio of
    greedily generated to reference unit counts."""
    if not pairs:
        raise T2TError("no held-out pairs to evaluate on")
    correct = total = 0
    loss_sum = 0.0
    generated = reference = 0
    for start in range(0, len(pairs), batch):
        chosen = pairs[start : start + batch]
        documents = [render_pairs({sample.SEGMENTS: [{sample.MODALITY: sample.TEXT, sample.TEXT: text},
                                                     {sample.MODALITY: sample.SPEECH, sample.UNITS: units}]})[0]
                     for text, units, _ in chosen]
        width = max(len(ids) for ids, _, _ in documents)
        ids = torch.tensor([ids + [PAD] * (width - len(ids)) for ids, _, _ in documents], device=model.device)
        labels = torch.tensor([labels + [IGNORE] * (width - len(labels)) for _, labels, _ in documents], device=model.device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # right padding: causal, so harmless
        targets = labels[:, 1:]
        scored = targets != IGNORE
        loss_sum += torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
        correct += (logits[scored].argmax(-1) == targets[scored]).sum().item()
        total += int(scored.sum())
        try:  # the bound synthesize keeps: units per word as the aligner counts words (characters in Chinese)
            limits = [math.ceil(len(split_words(text, language)) * meta["max_units_per_word"])
                      for text, _, language in chosen]
        except MissingExtra as error:
            raise T2TError(str(error)) from None
        generated += sum(len(units) for units in generate(model, [text for text, _, _ in chosen], limits))
        reference += sum(len(units) for _, units, _ in chosen)
    return {"pairs": len(pairs), "unit_accuracy": round(correct / total, 4), "perplexity": round(math.exp(loss_sum / total), 3),
            "length_ratio": round(generated / max(reference, 1), 3)}
