"""`sylm-data eval quality`: precision and recall of each label-quality check on a labelled fixture.

The fixture (`build_fixture`, espeak-ng speech of the bundled sample's sentences) is a `manifest`
whose lines carry `labels`, the checks that must flag them:

- `correct`: the sentence and its speech; flagged by nothing
- `swapped`: another sentence's transcript over the speech (transcript vs audio)
- `missing`: two sentences spoken, the first transcribed (transcript vs audio)
- `loop`: the transcript goes on in a loop the speech does not (loop, transcript vs audio)
- `boilerplate`: "thanks for watching" and kin over faint noise (boilerplate, transcript vs audio)
- `foreign`: a German, French or Spanish sentence spoken and transcribed after the English one (language)
- `inappropriate`: a listed word spoken in the sentence (inappropriate words)
- `restart`: a speaker breaking off and starting again, spoken so (restarts)

`evaluate` runs ingest with every bound off (each check judged alone, not behind the first reject)
and align (pocketsphinx) over it, then judges each check at the given bounds: the text checks by
their `label_scores`, transcript vs audio by align's failures and its scores' bounds.
"""

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile

from sylm_data.pipeline.partitions import read_source_partition
from sylm_data.quality import alignment, scores
from sylm_data.sample.build import SENTENCES, VOICES
from sylm_data.sample.espeak import Espeak
from sylm_data.schemas import stream, utterance
from sylm_data.sources import READERS
from sylm_data.stages import align, ingest

TRANSCRIPT_VS_AUDIO = "transcript_vs_audio"
LOOP = "hallucination_loop"
BOILERPLATE = "boilerplate"
LANGUAGE = "language"
INAPPROPRIATE = "inappropriate_words"
RESTARTS = "restarts"
CHECKS = (TRANSCRIPT_VS_AUDIO, LOOP, BOILERPLATE, LANGUAGE, INAPPROPRIATE, RESTARTS)
# the label-quality scores each text check reads (language: either of its two)
TEXT_SCORES = {
    LOOP: (utterance.LOOP_SHARE,),
    BOILERPLATE: (utterance.BOILERPLATE_SHARE,),
    LANGUAGE: (utterance.LANGUAGE_MISMATCH, utterance.CODE_SWITCH_SHARE),
    INAPPROPRIATE: (utterance.INAPPROPRIATE_SHARE,),
    RESTARTS: (utterance.RESTART_RATE,),
}
# a check that filters nothing by default (inappropriate words: a policy) is measured at this bound
UNBOUNDED_AT = 0.0

LOOPS = ["and then we went home", "thank you", "I don't know", "you know what I mean", "we have to go", "and the"]
BOILERPLATE_PHRASES = ["Thanks for watching!", "Thank you for watching.", "Please subscribe to my channel.",
                       "Subtitles by the Amara.org community", "Don't forget to subscribe!", "See you in the next video."]
FOREIGN = [
    ("de", "Wir haben gestern Abend lange über das neue Haus am See gesprochen."),
    ("fr", "Nous avons parlé longtemps de la nouvelle maison près du lac hier soir."),
    ("es", "Ayer por la noche hablamos mucho tiempo de la casa nueva junto al lago."),
    ("de", "Meine Schwester arbeitet seit drei Jahren in einer kleinen Buchhandlung."),
    ("fr", "Ma soeur travaille depuis trois ans dans une petite librairie du quartier."),
    ("es", "Mi hermana trabaja desde hace tres años en una pequeña librería del barrio."),
]
INAPPROPRIATE_WORDS = ["shit", "fucking", "bullshit", "bitch"]
# restarts as speakers make them: a cut-off word, then the phrase again
RESTART_OPENINGS = ["I- I went- I wa- I want to say", "we we saw- we saw that", "she- she said- she told us",
                    "so the- the the thing is"]


@dataclass(frozen=True)
class Item:
    key: str
    kind: str
    text: str
    speech: list[tuple[str, str]]  # (text, espeak voice) spoken one after the other
    labels: tuple[str, ...]
    noise_ms: int = 0  # faint noise instead of speech


def fixture_items(sentences: list[str] = SENTENCES) -> list[Item]:
    """The labelled utterances of the fixture, built on `sentences` (English)."""
    items = []
    count = len(sentences)
    for index, sentence in enumerate(sentences):
        voice = VOICES[index % len(VOICES)][0]
        other = sentences[(index + 5) % count]
        items += [
            Item(f"correct-{index:03d}", "correct", sentence, [(sentence, voice)], ()),
            Item(f"swapped-{index:03d}", "swapped", other, [(sentence, voice)], (TRANSCRIPT_VS_AUDIO,)),
        ]
        if index % 2:
            continue
        half = index // 2
        loop = LOOPS[half % len(LOOPS)]
        language, foreign = FOREIGN[half % len(FOREIGN)]
        word = INAPPROPRIATE_WORDS[half % len(INAPPROPRIATE_WORDS)]
        first, rest = sentence.split(" ", 1)
        rude = f"{first} {word} {rest}"
        broken = f"{RESTART_OPENINGS[half % len(RESTART_OPENINGS)]} {' '.join(sentence.split()[:3]).lower()}"
        items += [
            Item(f"missing-{index:03d}", "missing", sentence, [(sentence, voice), (other, voice)], (TRANSCRIPT_VS_AUDIO,)),
            Item(f"loop-{index:03d}", "loop", f"{sentence} {' '.join([loop] * 5)}", [(sentence, voice)],
                 (LOOP, TRANSCRIPT_VS_AUDIO)),
            Item(f"boilerplate-{index:03d}", "boilerplate", BOILERPLATE_PHRASES[half % len(BOILERPLATE_PHRASES)], [],
                 (BOILERPLATE, TRANSCRIPT_VS_AUDIO), noise_ms=2000),
            Item(f"foreign-{index:03d}", "foreign", f"{sentence} {foreign}", [(sentence, voice), (foreign, language)],
                 (LANGUAGE,)),
            Item(f"inappropriate-{index:03d}", "inappropriate", rude, [(rude, voice)], (INAPPROPRIATE,)),
            Item(f"restart-{index:03d}", "restart", broken, [(broken, voice)], (RESTARTS,)),
        ]
    return items


def build_fixture(folder: Path, items: list[Item] | None = None) -> Path:
    """Speak `items` (default: `fixture_items()`) with espeak-ng into `folder`/audio/*.wav and write
    `folder`/manifest.jsonl (each line with its `kind` and `labels`); returns the manifest.
    Needs Debian's espeak-ng."""
    engine = Espeak()
    folder = Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for item in items if items is not None else fixture_items():
        parts = [engine.synthesize(text, voice) for text, voice in item.speech]
        rate = parts[0].sample_rate if parts else engine.sample_rate
        gap = np.zeros(rate * 3 // 10, np.float32)
        pieces = [gap]
        for part in parts:
            pieces += [part.samples.astype(np.float32) / 32768, gap]
        if item.noise_ms:
            pieces.append(rng.normal(0, 0.003, rate * item.noise_ms // 1000).astype(np.float32))
        buffer = io.BytesIO()
        soundfile.write(buffer, np.concatenate(pieces), rate, format="WAV", subtype="PCM_16")
        (folder / "audio" / f"{item.key}.wav").write_bytes(buffer.getvalue())
        lines.append({"id": item.key, "audio": f"audio/{item.key}.wav", "text": item.text, "language": "en",
                      "kind": item.kind, "labels": list(item.labels)})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@dataclass
class CheckResult:
    check: str
    bound: str  # the bounds it was judged at
    positives: int  # fixture lines labelled with it
    flagged: int
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.flagged if self.flagged else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.positives if self.positives else 1.0


@dataclass
class QualityEvaluation:
    results: list[CheckResult]
    lines_read: int
    transcript_vs_audio_reasons: dict[str, int]  # what flagged transcript vs audio, by score or failure

    def lines(self) -> list[str]:
        shown = [f"{self.lines_read} labelled utterances; ingest + align (pocketsphinx)",
                 f"{'check':<22} {'P':>5} {'R':>5}  {'flagged':>7} {'labelled':>8}  bound"]
        for result in self.results:
            shown.append(f"{result.check:<22} {result.precision:>5.2f} {result.recall:>5.2f}  {result.flagged:>7} "
                         f"{result.positives:>8}  {result.bound}")
        reasons = ", ".join(f"{name} {count}" for name, count in sorted(self.transcript_vs_audio_reasons.items()))
        shown.append(f"flagged as transcript_vs_audio by: {reasons or 'nothing'}")
        return shown


def evaluate(manifest: Path, ingest_config: ingest.IngestConfig | None = None,
             align_config: align.AlignConfig | None = None) -> QualityEvaluation:
    """Each check's precision and recall over a labelled manifest (lines with `labels`), judged at
    the bounds of `ingest_config` and `align_config` (default: the defaults)."""
    ingest_config = ingest_config or ingest.IngestConfig()
    align_config = align_config or align.AlignConfig()
    entries = [json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()]
    labels = {entry["id"]: set(entry.get("labels", ())) for entry in entries}
    unknown = {label for found in labels.values() for label in found} - set(CHECKS)
    if unknown:
        raise ValueError(f"{manifest}: unknown labels {sorted(unknown)}; the checks are {', '.join(CHECKS)}")
    unbounded_ingest = replace(ingest_config, **{check.threshold: None for check in scores.CHECKS})
    unbounded_align = replace(align_config, backend="pocketsphinx",
                              **{bound.threshold: None for bound in alignment.BOUNDS})
    partition = READERS["manifest"].partitions([str(manifest)])[0]
    ingested = pa.concat_tables([ingest.transform(batch, unbounded_ingest)
                                 for batch in read_source_partition(partition, "ingest", 64)])
    aligned = align.Aligner(unbounded_align)(ingested).to_pylist()
    flagged: dict[str, set[str]] = {check: set() for check in CHECKS}
    reasons: dict[str, int] = {}
    bounds = vars(align_config)
    for row in aligned:
        key = row[utterance.ID].split(":", 1)[-1]
        if row[stream.REJECT_STAGE] == ingest.NAME:
            raise ValueError(f"{key}: ingest rejected it ({row[stream.REJECT_REASON]}: {row[stream.REJECT_DETAIL]}); "
                             "a fixture line must reach the checks")
        if row[stream.REJECT_REASON] is not None:
            why = row[stream.REJECT_REASON]
        else:
            out_of_bounds = alignment.first_out_of_bounds(row[utterance.LABEL_SCORES], bounds)
            why = out_of_bounds[1].split(" ", 1)[0] if out_of_bounds else None
        if why:
            flagged[TRANSCRIPT_VS_AUDIO].add(key)
            reasons[why] = reasons.get(why, 0) + 1
    ingest_scores = {row[utterance.ID].split(":", 1)[-1]: row[utterance.LABEL_SCORES] for row in ingested.to_pylist()}
    limits = {check.score: getattr(ingest_config, check.threshold) for check in scores.CHECKS}
    for check, names in TEXT_SCORES.items():
        for key, found in ingest_scores.items():
            if any(found[name] > (UNBOUNDED_AT if limits[name] is None else limits[name]) for name in names):
                flagged[check].add(key)
    results = []
    for check in CHECKS:
        positives = {key for key, found in labels.items() if check in found}
        results.append(CheckResult(check, _bound(check, ingest_config, align_config), len(positives),
                                   len(flagged[check]), len(flagged[check] & positives)))
    return QualityEvaluation(results, len(entries), reasons)


def _bound(check: str, ingest_config: ingest.IngestConfig, align_config: align.AlignConfig) -> str:
    """The bounds `check` is judged at, as the settings that set them."""
    if check == TRANSCRIPT_VS_AUDIO:
        set_bounds = [f"{bound.threshold} {getattr(align_config, bound.threshold)}" for bound in alignment.BOUNDS
                      if getattr(align_config, bound.threshold) is not None]
        return "align failures, " + ", ".join(set_bounds)
    thresholds = {text_check.score: text_check.threshold for text_check in scores.CHECKS}
    parts = []
    for name in TEXT_SCORES[check]:
        limit = getattr(ingest_config, thresholds[name])
        parts.append(f"{thresholds[name]} {limit}" if limit is not None else f"{name} > {UNBOUNDED_AT} (default: scored only)")
    return " or ".join(parts)

