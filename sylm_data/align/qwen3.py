"""Qwen3-ForcedAligner through transformers' own implementation (no qwen-asr package).

The model reads the audio and the transcript with two `<timestamp>` markers after every word and
classifies each marker into a time bin (80 ms each). Pieces are sorted by length and aligned in
padded batches; bf16 with SDPA attention on GPU, float32 on CPU.
"""

import torch

from sylm_data.pipeline.stage import resolve_device

NAME = "qwen3"
LANGUAGES = frozenset({"zh", "en", "yue", "fr", "de", "it", "ja", "ko", "pt", "ru", "es"})
WORD_UNITS = {"zh": "char", "yue": "char", "ja": "morpheme"}


class ModelLoadError(RuntimeError):
    pass


class Qwen3Aligner:
    languages = LANGUAGES
    word_unit = WORD_UNITS

    def __init__(self, model_id: str, device: str = "auto", batch_size: int = 8) -> None:
        from transformers import AutoModelForTokenClassification, AutoProcessor

        self.device = torch.device(resolve_device(device))
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.batch_size = batch_size
        try:
            self.processor = AutoProcessor.from_pretrained(model_id)
            self.model = AutoModelForTokenClassification.from_pretrained(model_id, dtype=self.dtype, attn_implementation="sdpa")
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"cannot load the aligner {model_id!r}: {error}. Without the weights, English aligns offline "
                "with --set align.backend=pocketsphinx"
            ) from None
        self.model.to(self.device).eval()
        self.timestamp_token_id = self.model.config.timestamp_token_id
        segment_ms = self.processor.timestamp_segment_time
        # the classifier can only name num_labels time bins
        self.max_piece_ms = int(self.model.config.num_labels * segment_ms)
        revision = getattr(self.model.config, "_commit_hash", None) or "local"
        self.id = f"{NAME}/{model_id}@{revision}"

    def words(self, text: str, language: str) -> list[str]:
        """The model's own units: CJK characters, Japanese morphemes (nagisa), Korean words (soynlp)."""
        return self.processor.split_words_for_alignment(text, _language_name(language))

    def align(self, pieces) -> list:
        """(start_ms, end_ms) per word for each piece, or a failure message."""
        results: list = [None] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda index: len(pieces[index].samples))
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            batch = [pieces[index] for index in indices]
            for index, timings in zip(indices, self._align_batch(batch)):
                results[index] = timings
        return results

    def _align_batch(self, batch) -> list:
        inputs, word_lists = self.processor.prepare_forced_aligner_inputs(
            audio=[piece.samples for piece in batch],
            transcript=[" ".join(piece.words) for piece in batch],
            language=[piece.language for piece in batch],
        )
        inputs = {
            name: value.to(self.device, self.dtype if value.is_floating_point() else None)
            for name, value in inputs.items()
            if name in self.processor.model_input_names
        }
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        decoded = self.processor.decode_forced_alignment(logits.float(), inputs["input_ids"], word_lists, self.timestamp_token_id)
        results = []
        for piece, words in zip(batch, decoded):
            if len(words) != len(piece.words):
                results.append(f"the aligner timed {len(words)} units for {len(piece.words)} words")
            else:
                results.append([(round(w["start_time"] * 1000), round(w["end_time"] * 1000)) for w in words])
        return results


def _language_name(code: str) -> str:
    from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

    return LANGUAGE_CODE_TO_NAME[code]
