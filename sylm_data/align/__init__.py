"""Aligner backends (Qwen3-ForcedAligner, pocketsphinx) and the word splitting and checks they share."""
