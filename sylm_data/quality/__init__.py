"""Label-quality checks for one transcript: pure functions of (text, language) that return a float
score, higher = worse, each with a default threshold (`DEFAULT_MAX_*`, reject above it) beside it;
`scores` runs them all for the `label_scores` column and names each one's reject reason.

- `hallucination`: n-gram loops (`loop_share`) and boilerplate phrases (`boilerplate_share`)
- `language`: the declared language against text language ID (`language_mismatch`,
  `code_switch_share`)
- `inappropriate`: listed words (`inappropriate_share`)
- `restarts`: restarts and self-corrections (`restart_rate`)
- `minhash`: near-duplicate transcripts (`signature`, `band_keys`, `clusters`), for a shuffle by band key
- `alignment`: the transcript against its audio, from a forced alignment's word times (speaking rate,
  untranscribed speech, pocketsphinx's phone rate, Qwen3's posteriors); scored by the align stage,
  bounded by `align.max_*` / `align.min_*`
- `evaluate`: `sylm-data eval quality`, each check's precision and recall on a labelled espeak-ng fixture
"""
