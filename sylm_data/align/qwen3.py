"""Qwen3-ForcedAligner through transformers' own implementation (no qwen-asr package).

The model reads the audio and the transcript with two `<timestamp>` markers after every word and
classifies each marker into a time bin (80 ms each). Pieces are sorted by length and aligned in
padded batches; bf16 with SDPA attention on GPU, float32 on CPU. A piece's times do not depend on
its batch-mates: pieces are trimmed to whole 10 ms feature frames (a partial frame counts as one
for a short row but not for the longest, so it shifted every time) and positions restart at 0 on
each row's first token under left padding, as in the authors' package. Each word's times come
with the posterior mass of the bins chosen for its two markers, for the align stage's confidence
scores (`quality.alignment`).
"""

import torch

from sylm_data import offline
from sylm_data.align.split import split_words
from sylm_data.align.words import AlignedPiece
from sylm_data.checkpoints import WeightsMismatch, from_pretrained_strict
from sylm_data.pipeline.stage import resolve_device

NAME = "qwen3"
LANGUAGES = frozenset({"zh", "en", "yue", "fr", "de", "it", "ja", "ko", "pt", "ru", "es"})
WORD_UNITS = {"zh": "char", "yue": "char", "ja": "morpheme"}
MAX_PIECE_MS = 180_000  # the authors' limit for one forced-alignment input
FRAME_SAMPLES = 160  # the feature extractor's hop: 10 ms at 16 kHz


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
        cached = offline.local_only(model_id)
        try:
            self.processor = AutoProcessor.from_pretrained(model_id, local_files_only=cached)
            self.model = from_pretrained_strict(AutoModelForTokenClassification, model_id, dtype=self.dtype,
                                                attn_implementation="sdpa", local_files_only=cached)
        except (OSError, ValueError, WeightsMismatch) as error:
            raise ModelLoadError(
                f"cannot load the aligner {model_id!r}: {offline.reason(error, model_id)}. Without the weights, "
                "English aligns offline with --set align.backend=pocketsphinx"
            ) from None
        self.model.to(self.device).eval()
        self.timestamp_token_id = self.model.config.timestamp_token_id
        self.bin_ms = int(self.processor.timestamp_segment_time)
        # the classifier can only name num_labels time bins
        self.max_piece_ms = min(int(self.model.config.num_labels * self.bin_ms), MAX_PIECE_MS)
        revision = getattr(self.model.config, "_commit_hash", None) or "local"
        self.id = f"{NAME}/{model_id}@{revision}"

    def words(self, text: str, language: str) -> list[str]:
        """The model's own units as its authors split them: CJK characters, Japanese morphemes
        (nagisa), whitespace words elsewhere (Korean ones kept whole, see `align.split`)."""
        return split_words(text, language)

    def align(self, pieces) -> list:
        """Each piece's word times with their posteriors (`AlignedPiece`), or a failure message."""
        results: list = [None] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda index: len(pieces[index].samples))
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            batch = [pieces[index] for index in indices]
            for index, timings in zip(indices, self._align_batch(batch)):
                results[index] = timings
        return results

    def _align_batch(self, batch) -> list:
        # the conversation is built from the word list itself: joined and split again, Japanese
        # morphemes would not always come back the same
        conversations = [[{"role": "user", "content": [
            {"type": "audio", "audio": piece.samples[: len(piece.samples) - len(piece.samples) % FRAME_SAMPLES]},
            *({"type": "text", "text": word} for word in piece.words),
        ]}] for piece in batch]
        inputs = self.processor.apply_chat_template(conversations, tokenize=True, return_dict=True)
        inputs = {
            name: value.to(self.device, self.dtype if value.is_floating_point() else None)
            for name, value in inputs.items()
            if name in self.processor.model_input_names
        }
        mask = inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(**inputs, position_ids=positions).logits
        word_lists = [piece.words for piece in batch]
        decoded = self.processor.decode_forced_alignment(logits.float(), inputs["input_ids"], word_lists, self.timestamp_token_id)
        markers = inputs["input_ids"] == self.timestamp_token_id
        results = []
        for row, (piece, words) in enumerate(zip(batch, decoded)):
            if len(words) != len(piece.words):
                results.append(f"the aligner timed {len(words)} units for {len(piece.words)} words")
                continue
            # the decoder takes each marker's most probable bin: its probability is how sure it was
            chosen = logits[row][markers[row]].float().softmax(dim=-1).amax(dim=-1)
            confidence = chosen.reshape(-1, 2).mean(dim=-1).tolist()
            results.append(AlignedPiece([(round(w["start_time"] * 1000), round(w["end_time"] * 1000)) for w in words],
                                        confidence=confidence))
        return results

