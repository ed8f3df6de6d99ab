"""sylm-data: syllable-text interleaved speech corpora for spoken-language-model pre-training."""

__version__ = "0.1.0"
