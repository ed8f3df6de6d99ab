"""The offline CPU aligner: pocketsphinx's English acoustic model (shipped in its wheel).

Each transcript becomes a linear finite-state grammar (silence may appear between words) and
pocketsphinx's Viterbi search places the words. Its HMMs need at least 3 frames per phone, so
fast speech can defeat the 100 frames/s default: the search is repeated at 200 frames/s, then
with 300 ms of near-silence around the audio (room for a clipped first or last phone), before the
utterance is given up. A transcript that does not match the audio usually cannot reach the
grammar's final state at all; when it does, the words come out squeezed to the HMMs' minimum
length or stretched over the wrong sounds: each word's phone count goes with its times, for the
align stage's phone-rate scores (`quality.alignment`). Words missing from the CMU dictionary get a
rule-based pronunciation.
"""

import importlib.metadata
import re

import numpy as np

from sylm_data.align.words import AlignedPiece, Piece, transcript_words

FRAME_RATES = (100, 200)
ATTEMPTS = ((100, 0), (200, 0), (200, 300))  # (frames per second, padding ms on each side)
NAME = "pocketsphinx"

# grapheme -> CMU phones, longest match first; crude, but enough to keep an utterance alignable
_LETTER_RULES = [
    ("tch", "CH"), ("sch", "S K"), ("ough", "AO"), ("augh", "AO"), ("igh", "AY"), ("eigh", "EY"),
    ("ch", "CH"), ("sh", "SH"), ("th", "TH"), ("ph", "F"), ("ck", "K"), ("ng", "NG"), ("wh", "W"),
    ("qu", "K W"), ("gh", "G"), ("kn", "N"), ("wr", "R"), ("ee", "IY"), ("ea", "IY"), ("oo", "UW"),
    ("ou", "AW"), ("ow", "OW"), ("oi", "OY"), ("oy", "OY"), ("ai", "EY"), ("ay", "EY"), ("au", "AO"),
    ("aw", "AO"), ("ie", "IY"), ("ei", "EY"), ("ue", "UW"), ("ui", "UW"), ("ar", "AA R"), ("er", "ER"),
    ("ir", "ER"), ("ur", "ER"), ("or", "AO R"),
    ("a", "AE"), ("b", "B"), ("c", "K"), ("d", "D"), ("e", "EH"), ("f", "F"), ("g", "G"), ("h", "HH"),
    ("i", "IH"), ("j", "JH"), ("k", "K"), ("l", "L"), ("m", "M"), ("n", "N"), ("o", "AA"), ("p", "P"),
    ("q", "K"), ("r", "R"), ("s", "S"), ("t", "T"), ("u", "AH"), ("v", "V"), ("w", "W"), ("x", "K S"),
    ("y", "IY"), ("z", "Z"),
]
_DIGITS = "zero one two three four five six seven eight nine".split()


def spell_out(word: str) -> str:
    """CMU phones for a word the dictionary lacks, from letter rules (digits read one by one)."""
    phones = []
    position = 0
    word = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", word.lower())
    while position < len(word):
        for graphemes, sounds in _LETTER_RULES:
            if word.startswith(graphemes, position):
                phones.append(sounds)
                position += len(graphemes)
                break
        else:
            position += 1  # apostrophes, hyphens, spaces, letters outside a-z: silent
    if word.endswith("e") and len(phones) > 2 and phones[-1] == "EH":
        phones.pop()  # a silent final e
    return " ".join(phones) or "AH"


class PocketsphinxAligner:
    languages = frozenset({"en"})
    word_unit = {"en": "word"}
    # one Viterbi search over minutes of audio loses the path (0 words placed at 180 s); 30 s holds
    max_piece_ms = 30_000
    bin_ms = 0  # frame-level times: no binning to pile words up at piece edges

    def __init__(self) -> None:
        import pocketsphinx

        self.id = f"{NAME}/en-us@{importlib.metadata.version('pocketsphinx')}"
        self._decoders = {rate: pocketsphinx.Decoder(samprate=16000, lm=None, loglevel="FATAL", frate=rate)
                          for rate in FRAME_RATES}

    def words(self, text: str, language: str) -> list[str]:
        return transcript_words(text, language)

    def _spoken(self, word: str) -> str:
        """The dictionary entry for a transcript word, added from letter rules when missing."""
        entry = re.sub(r"[^a-z0-9']", "", word.lower()) or "a"
        if not entry[0].isalpha() or self._decoders[FRAME_RATES[0]].lookup_word(entry) is None:
            entry = f"x_{entry}"
            if self._decoders[FRAME_RATES[0]].lookup_word(entry) is None:
                phones = spell_out(entry[2:])
                for decoder in self._decoders.values():
                    decoder.add_word(entry, phones, True)
        return entry

    def align(self, pieces: list[Piece]) -> list[AlignedPiece | str]:
        """Each piece's word times with the words' phone counts, or why it could not be aligned."""
        return [self._align_one(piece) for piece in pieces]

    def _align_one(self, piece: Piece) -> AlignedPiece | str:
        spoken = [self._spoken(word) for word in piece.words]
        found = 0
        for rate, padding_ms in ATTEMPTS:
            decoder = self._decoders[rate]
            grammar = decoder.create_fsg("align", 0, len(spoken), [(i, i + 1, 1.0, w) for i, w in enumerate(spoken)])
            decoder.add_fsg("align", grammar)
            decoder.activate_search("align")
            decoder.start_stream()  # noise statistics from earlier utterances would move this one's words
            decoder.start_utt()
            decoder.process_raw(_pcm(piece.samples, padding_ms), full_utt=True)
            decoder.end_utt()
            segments = [s for s in (decoder.seg() or []) if not s.word.startswith(("<", "["))]
            found = max(found, len(segments))
            if len(segments) == len(spoken):
                frame_ms = 1000 / rate
                timings = [
                    (round(s.start_frame * frame_ms) - padding_ms, round((s.end_frame + 1) * frame_ms) - padding_ms)
                    for s in segments
                ]
                lookup = self._decoders[FRAME_RATES[0]].lookup_word
                return AlignedPiece(timings, phones=[len(lookup(word).split()) for word in spoken])
        return f"pocketsphinx placed {found} of {len(spoken)} words (transcript may not match the audio)"


def _pcm(samples: np.ndarray, padding_ms: int) -> bytes:
    """16-bit PCM with a faint deterministic dither: digital silence (exact zeros) has no log
    energy, and pocketsphinx's front end loses the path over it."""
    if padding_ms:
        padding = np.zeros(16 * padding_ms, np.float32)
        samples = np.concatenate([padding, samples, padding])
    dither = np.random.default_rng(0).normal(0, 1e-4, len(samples)).astype(np.float32)
    return (np.clip(samples + dither, -1, 1) * 32767).astype(np.int16).tobytes()
