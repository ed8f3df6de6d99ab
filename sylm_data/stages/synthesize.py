"""synthesize: a text corpus -> interleaved samples whose speech a text-to-token model wrote.

Each document is cleaned (markup remnants, entities and URLs out, whitespace collapsed) and
checked (language, letters outside its script, very long words, length); a failed check is a
reject with its reason. Its words are the units the aligner times (`align.split`: characters in
Chinese, morphemes in Japanese, whitespace words elsewhere), so that they are counted as the pairs
the model learned from were. Words (or sentences) are the chunks, and speech spans are chosen with
the interleave stage's own policy (`spans.choose_speech`: Poisson spans until `speech_ratio` of the
words). Every run of speech chunks gets units from the text-to-token model, generated in batches
across the documents of a call (KV cache; greedy, or sampled with a seed per span), at most
`max_units_per_word` (from its training data) per word. Samples carry the model's id in
`synthetic`; once every partition is in, the driver writes DIR/shards-synthetic/.
"""

import hashlib
import html
import json
import math
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from sylm_data import languages
from sylm_data.align import split
from sylm_data.pipeline.stage import (
    SOURCES,
    MapOptions,
    Rejected,
    Stage,
    StageConfigError,
    error_detail,
    model_actors,
    resolve_device,
)
from sylm_data.schemas import sample, source_record, stream
from sylm_data.schemas.reject import Reason
from sylm_data.documents import publish, render, spans

NAME = "synthesize"


@dataclass
class SynthesizeConfig:
    ROWS_VERSION: ClassVar[int] = 3  # 2: speech spans by randomised rounding (spans.choose_speech); 3: source_ids
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "actors", "gpus_per_actor")
    source: str = "text"  # JSONL or Parquet with a `text` column (sources/text.py)
    inputs: list[str] = field(default_factory=list)  # local paths/globs or hf://OWNER/NAME/PATTERN
    root: str | None = None  # the folder partition ids are relative to; default: each glob's static prefix
    model: str = ""  # a text-to-token model: OUTPUT/final of `sylm-data train --task t2t`, or a hub id
    language: str = "en"  # for documents that name none
    languages: list[str] = field(default_factory=list)  # ISO 639-1 codes to keep; empty keeps all
    granularity: str = "word"  # word | sentence, as interleave
    speech_ratio: float = 0.3
    span_mean: float = 10.0
    seed: int = 0
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: the whole unit vocabulary
    min_words: int = 5  # words as the aligner counts them: characters in Chinese, morphemes in Japanese
    max_words: int = 20_000
    max_token_chars: int = 40  # longer words (hashes, base64, run-together URLs) ...
    max_long_token_share: float = 0.02  # ... may be at most this share of the words
    max_markup_share: float = 0.3  # markup removed over the document's characters
    max_foreign_letter_share: float = 0.1
    device: str = "auto"
    actors: int = 1
    gpus_per_actor: float = 1.0
    batch_size: int = 64  # documents per call
    generate_batch: int = 256  # spans generated together
    shard_bytes: int = 256 * 2**20
    min_shards: int = 1  # at least this many shards (samples allowing), as interleave.min_shards


def preflight(config: SynthesizeConfig) -> None:
    if config.source != "text":
        raise StageConfigError(f"synthesize reads a text corpus (source 'text'), not {config.source!r}")
    if not config.model:
        raise StageConfigError("no text-to-token model: set synthesize.model to OUTPUT/final of `sylm-data train --task t2t`")
    if config.granularity not in ("word", "sentence"):
        raise StageConfigError(f"granularity must be word or sentence, not {config.granularity!r}")
    if not 0 <= config.speech_ratio <= 1:
        raise StageConfigError(f"speech_ratio must be within 0..1, got {config.speech_ratio}")
    publish.check_shard_options(config)
    from sylm_data.train import t2t  # torch: only once a run starts, not when the stage is listed

    try:
        t2t.locate(config.model)
        for code in {config.language, *config.languages}:  # a language named here must be splittable
            split.split_words("", code)
    except (t2t.T2TError, split.MissingExtra) as error:
        raise StageConfigError(str(error)) from None


_TAG = re.compile(r"<[^>\n]{1,200}>")
_MARKDOWN_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\s]*\)")
_URL = re.compile(r"\b(?:https?://|www\.)\S+")
_DECORATION = re.compile(r"^\s*(?:#{1,6}\s|[*+-]\s|>\s|\|)|\*\*|__|`{1,3}", re.MULTILINE)


def clean(text: str) -> tuple[str, int]:
    """The document without markup remnants, and how many characters that took away."""
    stripped = _DECORATION.sub(" ", _URL.sub(" ", _MARKDOWN_LINK.sub(r"\1", _TAG.sub(" ", html.unescape(text)))))
    cleaned = " ".join(stripped.split())
    return cleaned, max(len(" ".join(text.split())) - len(cleaned), 0)


Words = list[tuple[str, int, int]]  # (word, start, end) in the clean text, as `split.word_spans` gives them


def check_document(text: str | None, language: str | None, config: SynthesizeConfig) -> tuple[str, str, Words]:
    """(clean text, language, its words where they are written), or Rejected with the first rule it breaks."""
    if not text or not text.strip():
        raise Rejected(Reason.EMPTY_TEXT, "no text")
    code = languages.normalize(language) if language else languages.normalize(config.language)
    if code is None:
        raise Rejected(Reason.UNKNOWN_LANGUAGE, f"language {language!r}")
    if config.languages and code not in config.languages:
        raise Rejected(Reason.LANGUAGE_FILTERED, f"{code} not in {config.languages}")
    cleaned, removed = clean(text)
    if removed > config.max_markup_share * max(len(text), 1):
        raise Rejected(Reason.MARKUP, f"{removed} of {len(text)} characters were markup, links or URLs")
    try:
        words = split.word_spans(cleaned, code)
    except split.MissingExtra as error:
        raise Rejected(Reason.LANGUAGE_UNSUPPORTED, str(error)) from None
    long_words = sum(len(word) > config.max_token_chars for word, _, _ in words)
    if long_words > config.max_long_token_share * max(len(words), 1):
        raise Rejected(Reason.LONG_TOKENS, f"{long_words} of {len(words)} words longer than {config.max_token_chars} characters")
    share = languages.foreign_letter_share(cleaned, code)
    if share > config.max_foreign_letter_share:
        raise Rejected(Reason.FOREIGN_SCRIPT, f"{share:.0%} of the letters are outside {code}'s scripts")
    if len(words) < config.min_words:
        raise Rejected(Reason.TOO_SHORT, f"{len(words)} words, fewer than {config.min_words}")
    if len(words) > config.max_words:
        raise Rejected(Reason.TOO_LONG, f"{len(words)} words, more than {config.max_words}")
    return cleaned, code, words


def cuts(text: str, words: Words) -> list[int]:
    """Where the document may be cut before each word, then its end: piece k of a run of words is
    text[cuts[first]:cuts[end]]; the text before the first word goes with it."""
    starts = [start for _, start, _ in words]
    return [0, *starts[1:]][: len(starts)] + [len(text)]


def speech_runs(text: str, words: Words, config: SynthesizeConfig, sample_id: str) -> list[tuple[int, int, bool]]:
    """(first word, end word, is speech) runs covering the document, chosen as interleave chooses."""
    if config.granularity == "sentence":
        written = [text[start:end] for _, start, end in words]
        ends = sorted(spans.sentence_ends(text, written, [start for _, start, _ in words]) | {len(words)})
        bounds = list(zip([0] + ends[:-1], ends))
    else:
        bounds = [(index, index + 1) for index in range(len(words))]
    speech = spans.choose_speech(np.array([end - first for first, end in bounds], np.int64), np.zeros(len(bounds), np.int64),
                                 spans.stream_keys(config.seed, [sample_id]), config.speech_ratio, config.span_mean,
                                 span_in_words=config.granularity == "word").tolist()
    runs: list[tuple[int, int, bool]] = []
    for (first, end), is_speech in zip(bounds, speech):
        if runs and runs[-1][2] == is_speech:
            runs[-1] = (runs[-1][0], end, is_speech)
        else:
            runs.append((first, end, is_speech))
    return runs


def span_seed(seed: int, sample_id: str, run: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{sample_id}:{run}".encode(), digest_size=8).digest(), "little") >> 1


_PAYLOAD = [name for name in sample.ROW_SCHEMA.names if name not in (sample.ROW_KEY, sample.ROW_SOURCE)]
OUTPUT_SCHEMA = stream.in_flight(sample.ROW_SCHEMA)


class Synthesizer:
    def __init__(self, config: SynthesizeConfig) -> None:
        import torch

        from sylm_data.train import t2t

        self.config = config
        device = resolve_device(config.device)
        self.model, self.meta = t2t.load(config.model, device, torch.bfloat16 if device == "cuda" else torch.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        config, rows, plans, requests = self.config, [], [], []
        for record in batch.to_pylist():
            row = {sample.ROW_KEY: record[source_record.ID], sample.ROW_SOURCE: record[source_record.SOURCE],
                   **{name: record[name] for name in stream.ENVELOPE_NAMES}} | dict.fromkeys(_PAYLOAD)
            rows.append(row)
            if row[stream.REJECT_REASON] is not None:
                continue
            try:
                text, language, words = check_document(record[source_record.TEXT], record[source_record.LANGUAGE], config)
                bounds = cuts(text, words)
                runs = speech_runs(text, words, config, row[sample.ROW_KEY])
                pieces = [text[bounds[first] : bounds[end]].strip() for first, end, _ in runs]
                runs = self._fitting(runs, pieces)
            except Rejected as rejected:
                stream.mark_rejected(row, _PAYLOAD, NAME, rejected.reason, rejected.detail)
                continue
            except Exception as error:  # one bad document must not take the run down: record it, show it
                traceback.print_exc()
                stream.mark_rejected(row, _PAYLOAD, NAME, Reason.STAGE_ERROR, error_detail(error))
                continue
            plans.append((row, language, text, bounds, runs, pieces))
            for number, ((first, end, is_speech), piece) in enumerate(zip(runs, pieces)):
                if is_speech:
                    requests.append((piece, self._limit(end - first), span_seed(config.seed, row[sample.ROW_KEY], number)))
        generated = iter(self._generate(requests))
        for row, language, text, bounds, runs, pieces in plans:
            row.update(self._sample(row[sample.ROW_KEY], language, text, bounds, runs, generated))
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)

    def _limit(self, words: int) -> int:
        return math.ceil(words * self.meta["max_units_per_word"])

    def _fitting(self, runs: list[tuple[int, int, bool]], pieces: list[str]) -> list[tuple[int, int, bool]]:
        """Speech runs whose prompt and units would not fit the model's positions (or that have no text) stay text."""
        room = self.model.config.max_position_embeddings
        return [(first, end, is_speech and bool(piece) and len(piece.encode()) + 1 + self._limit(end - first) < room)
                for (first, end, is_speech), piece in zip(runs, pieces)]

    def _generate(self, requests: list[tuple[str, int, int]]) -> list[list[int]]:
        """Units per request, in request order; batches hold spans of similar length."""
        from sylm_data.train import t2t

        order = sorted(range(len(requests)), key=lambda index: len(requests[index][0]))
        units: list[list[int]] = [[] for _ in requests]
        for start in range(0, len(order), self.config.generate_batch):
            chosen = order[start : start + self.config.generate_batch]
            texts, limits, seeds = zip(*(requests[index] for index in chosen))
            for index, made in zip(chosen, t2t.generate(self.model, list(texts), list(limits), self.config.temperature,
                                                        self.config.top_k, list(seeds))):
                units[index] = made
        return units

    def _sample(self, sample_id: str, language: str, text: str, bounds: list[int], runs, generated) -> dict:
        """A text segment is the document's own text from its first word to the next speech segment
        (never pieces joined with spaces, which Chinese and Japanese do not have)."""
        segments, speech_words, unit_count, text_from = [], 0, 0, None
        for first, end, is_speech in runs:
            units = next(generated) if is_speech else None
            if units:  # a span the model gave no units for stays text
                segments.append(sample.speech_segment(units))
                speech_words, unit_count, text_from = speech_words + end - first, unit_count + len(units), None
                continue
            if text_from is None:
                text_from = first
                segments.append(sample.text_segment(""))
            segments[-1][sample.TEXT] = text[bounds[text_from] : bounds[end]].strip()
        kind = "interleaved" if speech_words else "text"
        document = {sample.SEGMENTS: segments, sample.KIND: kind, sample.LANGUAGE: language, sample.SOURCE_ID: sample_id,
                    sample.SOURCE_IDS: [sample_id], sample.SYNTHETIC: self.meta["id"]}
        return {sample.ROW_KIND: kind, sample.ROW_LANGUAGE: language,
                sample.ROW_JSON: render.COMPACT_JSON.encode(document),
                sample.ROW_WORDS: len(bounds) - 1, sample.ROW_SPEECH_WORDS: speech_words, sample.ROW_UNITS: unit_count,
                sample.ROW_TOKENIZER: self.meta["tokenizer"]}


def map_options(config: SynthesizeConfig) -> MapOptions:
    return model_actors(resolve_device(config.device) == "cuda", config.actors, config.gpus_per_actor, config.batch_size)


def describe_synthetic(table: pa.Table) -> dict:
    """The unit tokenizer and the model that generated the units."""
    if not table.num_rows:
        return {}
    model_id = json.loads(table[sample.ROW_JSON][0].as_py())[sample.SYNTHETIC]  # one run, one model: the config hash sees to it
    return publish.sample_vocabulary(table) | {sample.SYNTHETIC: model_id}


def write_shards(config: SynthesizeConfig, folder: Path, parallel) -> dict:
    """The committed samples into DIR/shards-synthetic, partition by partition."""
    index = publish.publish_samples(folder, folder.parent / "shards-synthetic", config.shard_bytes,
                                       {"config_hash": publish.config_digest(config)}, parallel, describe=describe_synthetic,
                                       min_shards=config.min_shards, title="sylm-data synthetic speech–text samples")
    return {"shards": len(index["shards"]), "samples": index["total_samples"],
            "speech_text_ratio": index["stats"].get("speech_text_ratio")}


STAGE = Stage(
    name=NAME,
    consumes=SOURCES,
    contract=sample.ROW_SCHEMA,
    description="text corpora -> interleaved samples with generated units -> DIR/shards-synthetic/ (WebDataset)",
    config_type=SynthesizeConfig,
    make_transform=Synthesizer,
    map_options=map_options,
    preflight=preflight,
    finalize=write_shards,
)
