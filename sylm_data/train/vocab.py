"""The LLM's vocabulary extended for speech: one token per unit id plus two modality markers.

New tokens are appended after the tokenizer's last id, in a fixed order, so unit u is token
`first_unit + u` and rendering a speech segment needs no tokenizer call. Every embedding row the
tokenizer never produced, new or a pad row the table already had, starts at the mean of the rows
it did produce (input and output embeddings alike).
"""

from dataclasses import dataclass

import torch

SPEECH_MARKER = "<|sylm_speech|>"  # text -> speech switch
TEXT_MARKER = "<|sylm_text|>"  # speech -> text switch


def unit_token(unit: int) -> str:
    return f"<|sylm_unit_{unit}|>"


class VocabularyError(ValueError):
    pass


@dataclass(frozen=True)
class SpeechVocabulary:
    speech_marker: int
    text_marker: int
    first_unit: int
    units: int


def _token_ids(tokenizer, units: int) -> list[int | None]:
    names = [SPEECH_MARKER, TEXT_MARKER] + [unit_token(u) for u in range(units)]
    unknown = tokenizer.unk_token_id
    return [None if i is None or (i == unknown and unknown is not None) else i for i in tokenizer.convert_tokens_to_ids(names)]


def speech_vocabulary(tokenizer, units: int) -> SpeechVocabulary:
    """The speech tokens' ids in `tokenizer`, added after its last id when it has none of them.

    They are plain added tokens, not special ones: `decode(ids, skip_special_tokens=True)` (vLLM's
    default) keeps the units and markers a model generates, and encoding that text gives the same ids."""
    if units < 1:
        raise VocabularyError(f"a speech vocabulary needs at least one unit, got {units}")
    ids = _token_ids(tokenizer, units)
    if all(i is None for i in ids):
        used = len(tokenizer)  # rows the tokenizer can produce: ids 0..used-1
        tokenizer.add_tokens([SPEECH_MARKER, TEXT_MARKER] + [unit_token(u) for u in range(units)])
        ids = _token_ids(tokenizer, units)
        if ids != list(range(used, used + units + 2)):
            raise VocabularyError(f"the tokenizer gave the speech tokens ids {ids[:3]}…, not {used}, {used + 1}, …")
    elif any(i is None for i in ids) or ids != list(range(ids[0], ids[0] + units + 2)):
        raise VocabularyError(f"the tokenizer has some speech tokens but not {units} units in order after the markers; "
                              "start from the base model")
    return SpeechVocabulary(speech_marker=ids[0], text_marker=ids[1], first_unit=ids[2], units=units)


def extend(model, tokenizer, units: int, pad_to: int = 64) -> SpeechVocabulary:
    """Add the speech tokens to `tokenizer` and rows for them to `model` (mean-initialised).

    A tokenizer that already has them (a model this trainer extended before) is left as it is,
    provided it knows at least `units` units."""
    used = len(tokenizer)
    vocabulary = speech_vocabulary(tokenizer, units)
    if len(tokenizer) > used:
        _resize_with_mean_rows(model, used, len(tokenizer), pad_to)
    last = vocabulary.first_unit + units - 1
    if model.get_input_embeddings().weight.shape[0] < last + 1:
        raise VocabularyError(f"the model's embeddings have {model.get_input_embeddings().weight.shape[0]} rows, "
                              f"fewer than the tokenizer's {last + 1}")
    return vocabulary


def _resize_with_mean_rows(model, used: int, needed: int, pad_to: int) -> None:
    rows = max(model.get_input_embeddings().weight.shape[0], -(-needed // pad_to) * pad_to)
    model.resize_token_embeddings(rows, mean_resizing=False)
    tables = [model.get_input_embeddings()]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not tables[0].weight:
        tables.append(output)
    with torch.no_grad():
        for table in tables:
            table.weight[used:] = table.weight[:used].mean(dim=0)
            if getattr(table, "bias", None) is not None:
                table.bias[used:] = table.bias[:used].mean()
