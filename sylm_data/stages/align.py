"""align: `utterance` rows -> `aligned` rows, word start/end times from a forced aligner.

Backends: `qwen3` (Qwen3-ForcedAligner through transformers; batched, GPU when present) and
`pocketsphinx` (English, CPU, offline). Audio longer than the backend's window is cut at quiet
points and each piece aligned with its share of the transcript. Whatever a backend returns is
checked (see `align_words.check_and_repair` and `edge_pileup`) before it is written; what fails is rejected with
`align_failed`, a language the backend lacks with `language_unsupported`. What passes is scored
(`quality.alignment`: speaking rate, pocketsphinx's phone rate, Qwen3's posteriors) into the row's
`label_scores`; a score beyond its bound (`align.max_*`, `align.min_*`) is a reject with its reason.
A backend that raises costs only the rows that raise on their own (`pipeline.stage.isolate`).
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from sylm_data import audio, offline
from sylm_data.align import words as align_words
from sylm_data.align.words import SAMPLE_RATE, AlignedPiece, AlignmentRejected, Piece
from sylm_data.pipeline.stage import MapOptions, Rejected, Stage, StageConfigError, model_actors, resolve_device
from sylm_data.quality import alignment
from sylm_data.schemas import aligned, stream, utterance
from sylm_data.schemas.reject import Reason

NAME = "align"


@dataclass
class AlignConfig:
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "actors", "gpus_per_actor")
    backend: str = "qwen3"  # qwen3 | pocketsphinx
    model: str = "Qwen/Qwen3-ForcedAligner-0.6B-hf"  # hub id or local folder (qwen3)
    device: str = "auto"  # auto: cuda when available, else cpu
    batch_size: int = 8  # pieces per forward pass (qwen3)
    actors: int = 1  # aligner processes; one per GPU on a GPU cluster
    gpus_per_actor: float = 1.0  # used when CUDA is visible to the driver
    max_piece_ms: int = 180_000
    max_word_ms: int = 5_000  # a longer word means the transcript does not match the audio
    # transcript against audio (quality.alignment): every score is kept in label_scores; one beyond
    # its bound is a reject; None keeps the score without filtering
    min_speaking_rate: float | None = alignment.DEFAULT_MIN_SPEAKING_RATE  # multiples of the language's typical rate
    max_speaking_rate: float | None = alignment.DEFAULT_MAX_SPEAKING_RATE
    max_untranscribed_voice_share: float | None = alignment.DEFAULT_MAX_UNTRANSCRIBED_VOICE_SHARE
    max_squeezed_word_share: float | None = alignment.DEFAULT_MAX_SQUEEZED_WORD_SHARE  # pocketsphinx
    max_slowest_ms_per_phone: float | None = alignment.DEFAULT_MAX_SLOWEST_MS_PER_PHONE  # pocketsphinx
    # Qwen3's: scored only until measured on its real weights
    max_timestamp_uncertainty: float | None = None
    max_one_bin_word_share: float | None = None
    max_piled_word_share: float | None = None
    max_inner_silence_share: float | None = None


def load_backend(config: AlignConfig):
    if config.backend == "pocketsphinx":
        from sylm_data.align.pocketsphinx import PocketsphinxAligner

        return PocketsphinxAligner()
    if config.backend == "qwen3":
        from sylm_data.align.qwen3 import Qwen3Aligner

        return Qwen3Aligner(config.model, config.device, config.batch_size)
    raise ValueError(f"unknown align backend {config.backend!r}: use qwen3 or pocketsphinx")


_PASSED = [name for name in aligned.SCHEMA.names if name not in (utterance.ID, utterance.SOURCE)]
OUTPUT_SCHEMA = stream.in_flight(aligned.SCHEMA)


class Aligner:
    """The align transform; holds one backend (one model) for all the batches it is given."""

    def __init__(self, config: AlignConfig) -> None:
        self.config = config
        self.backend = load_backend(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        prepared: dict[int, tuple[np.ndarray, list[Piece]]] = {}
        for index, row in enumerate(rows):
            row.update({aligned.WORDS: None, aligned.ALIGNER: None, aligned.WORD_UNIT: None})
            if row[stream.REJECT_REASON] is None:
                try:
                    prepared[index] = self._pieces(row)
                except Rejected as rejected:
                    stream.mark_rejected(row, _PASSED, NAME, rejected.reason, rejected.detail)
        results = iter(self.backend.align([piece for _, row_pieces in prepared.values() for piece in row_pieces]))
        for index, (samples, row_pieces) in prepared.items():
            self._finish(rows[index], samples, row_pieces, [next(results) for _ in row_pieces])
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)

    def _pieces(self, row: dict) -> tuple[np.ndarray, list[Piece]]:
        """The row's 16 kHz audio and its pieces, each with its share of the transcript."""
        language = row[utterance.LANGUAGE]
        if language not in self.backend.languages:
            raise Rejected(Reason.LANGUAGE_UNSUPPORTED, f"{self.config.backend} does not align {language!r}")
        try:
            words = self.backend.words(row[utterance.TEXT], language)
        except ImportError as error:  # e.g. Japanese needs nagisa
            raise Rejected(Reason.LANGUAGE_UNSUPPORTED, str(error)) from None
        if not words:
            raise Rejected(Reason.ALIGN_FAILED, "the transcript has no word to align")
        try:
            samples = audio.decode(row[utterance.AUDIO], SAMPLE_RATE).samples
        except audio.AudioDecodeError as error:
            raise Rejected(Reason.DECODE_ERROR, str(error)) from None
        max_piece_ms = min(self.config.max_piece_ms, self.backend.max_piece_ms)
        cuts = align_words.cut_points(samples, max_piece_ms)
        bounds = [0, *cuts, len(samples)]
        shares = align_words.share_words(words, align_words.speech_amounts(samples, bounds),
                                         align_words.clause_ends(row[utterance.TEXT], words))
        return samples, [
            Piece(samples[start:end], share, language, start * 1000 // SAMPLE_RATE)
            for (start, end), share in zip(zip(bounds, bounds[1:]), shares)
            if share
        ]

    def _finish(self, row: dict, samples: np.ndarray, pieces: list[Piece], results: list) -> None:
        failures = [result for result in results if isinstance(result, str)]
        if failures:
            stream.mark_rejected(row, _PASSED, NAME, Reason.ALIGN_FAILED, failures[0][:300])
            return
        timings = [(piece.offset_ms + start, piece.offset_ms + end)
                   for piece, result in zip(pieces, results) for start, end in result.timings]
        try:
            timings = align_words.check_and_repair(timings, row[utterance.DURATION_MS], self.config.max_word_ms)
        except AlignmentRejected as rejected:
            stream.mark_rejected(row, _PASSED, NAME, Reason.ALIGN_FAILED, str(rejected))
            return
        if self.backend.bin_ms:
            piled = [align_words.edge_pileup(result.timings, len(piece.samples) * 1000 // SAMPLE_RATE, self.backend.bin_ms)
                     for piece, result in zip(pieces, results)]
            if any(piled):
                stream.mark_rejected(row, _PASSED, NAME, Reason.ALIGN_FAILED, next(filter(None, piled)))
                return
        texts = [word for piece in pieces for word in piece.words]
        found = alignment.scores(texts, timings, row[utterance.LANGUAGE], samples, _joined(results, "phones"),
                                 _joined(results, "confidence"), self.backend.bin_ms)
        out_of_bounds = alignment.first_out_of_bounds(found, vars(self.config))
        if out_of_bounds is not None:
            stream.mark_rejected(row, _PASSED, NAME, *out_of_bounds)
            return
        row[utterance.LABEL_SCORES] = (row[utterance.LABEL_SCORES] or {}) | found
        row[aligned.WORDS] = [
            {aligned.WORD_TEXT: text, aligned.WORD_START_MS: start, aligned.WORD_END_MS: end}
            for text, (start, end) in zip(texts, timings)
        ]
        row[aligned.ALIGNER] = self.backend.id
        row[aligned.WORD_UNIT] = self.backend.word_unit.get(row[utterance.LANGUAGE], "word")


def _joined(results: list[AlignedPiece], measure: str) -> list | None:
    """One per-word measure of every piece, in word order; None when a piece lacks it."""
    parts = [getattr(result, measure) for result in results]
    return None if any(part is None for part in parts) else [value for part in parts for value in part]


def preflight(config: AlignConfig) -> None:
    """Fail before any work when the backend cannot load: a missing model is one clear line."""
    if config.backend == "pocketsphinx":
        return
    if config.backend != "qwen3":
        raise StageConfigError(f"unknown backend {config.backend!r}: use qwen3 or pocketsphinx")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(config.model, local_files_only=offline.local_only(config.model))
    except (OSError, ValueError) as error:
        raise StageConfigError(
            f"cannot load the aligner {config.model!r} ({offline.reason(error, config.model)}); without the weights, "
            "English aligns offline with --set align.backend=pocketsphinx"
        ) from None


def map_options(config: AlignConfig) -> MapOptions:
    on_gpu = config.backend == "qwen3" and resolve_device(config.device) == "cuda"
    return model_actors(on_gpu, config.actors, config.gpus_per_actor, max(config.batch_size * 4, 32))


STAGE = Stage(
    name=NAME,
    consumes="ingest",
    contract=aligned.SCHEMA,
    description="utterance rows -> aligned rows (word start/end ms; qwen3 or pocketsphinx)",
    config_type=AlignConfig,
    make_transform=Aligner,
    map_options=map_options,
    preflight=preflight,
)
