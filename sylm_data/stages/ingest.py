"""ingest: source records -> `utterance` rows, with quality filters and a reason for every reject.

Audio is decoded once, to prove it decodes and to measure its duration; the bytes stored are the
bytes found. Checks run cheapest first, so most rejects never pay for a decode.
"""

import functools
import json
import re
import traceback
import unicodedata
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from sylm_data import audio, languages
from sylm_data.pipeline.near_duplicates import Settings as NearDuplicateSettings
from sylm_data.pipeline.stage import SOURCES, MapOptions, Rejected, Stage, StageConfigError
from sylm_data.quality import hallucination, minhash, restarts, scores
from sylm_data.quality import language as language_id
from sylm_data.schemas import source_record, stream, utterance
from sylm_data.schemas.reject import Reason
from sylm_data.sources import AUDIO_SOURCES, yodas2

NAME = "ingest"

DEFAULT_FILLER_WORDS = {
    "en": ["uh", "um", "uhm", "umm", "er", "erm", "ah", "hmm", "mm", "mhm"],
    "de": ["äh", "ähm", "öh", "hm", "mhm"],
    "fr": ["euh", "heu", "hum", "bah"],
    "es": ["eh", "este", "em", "mmm"],
}


@dataclass
class IngestConfig:
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("workers", "cpus_per_worker")
    ROWS_VERSION: ClassVar[int] = 3  # 2: rows carry recording, recording_start_ms, segment_index and label_scores; 3: YODAS2 segment_index
    source: str = "emilia"  # emilia | emilia-yodas | yodas2 | manifest | lhotse
    inputs: list[str] = field(default_factory=list)  # local paths/globs or hf://OWNER/NAME/PATTERN
    root: str | None = None  # the dataset folder partition ids are relative to; default: each glob's static prefix
    min_duration_ms: int = 300
    max_duration_ms: int = 120_000
    min_quality: float | None = None  # DNSMOS; samples without a score pass
    languages: list[str] = field(default_factory=list)  # ISO 639-1 codes to keep; empty keeps all
    # YODAS2 subsets to keep (en000, en100, ...: caption sources differ); empty keeps all
    subsets: list[str] = field(default_factory=list)
    max_foreign_letter_share: float = 0.1  # letters outside the language's scripts
    max_filler_share: float = 0.3  # filler words over all words
    max_repeat_run: int = 3  # the same word this many times in a row is fine, once more is a stutter
    filler_words: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_FILLER_WORDS))
    # label quality (sylm_data/quality): every score is kept in label_scores; one over its bound is a
    # reject; None keeps the score without filtering
    max_loop_share: float | None = hallucination.DEFAULT_MAX_LOOP_SHARE
    max_boilerplate_share: float | None = hallucination.DEFAULT_MAX_BOILERPLATE_SHARE
    max_language_mismatch: float | None = language_id.DEFAULT_MAX_MISMATCH
    max_code_switch_share: float | None = language_id.DEFAULT_MAX_CODE_SWITCH_SHARE
    max_inappropriate_share: float | None = None  # a choice of policy, not of label quality: scored only
    max_restart_rate: float | None = restarts.DEFAULT_MAX_RATE
    boilerplate_file: str | None = None  # LANGUAGE<TAB>PHRASE lines added to the shipped list
    inappropriate_file: str | None = None  # LANGUAGE<TAB>WORD lines (WORD* matches its beginning too)
    # near-duplicate transcripts across the corpus (pipeline/near_duplicates): "off", "report" (a
    # cluster table in DIR/_near_duplicates), or "drop" (one kept per cluster, the others rejected)
    near_duplicates: str = "off"
    near_duplicate_similarity: float = minhash.DEFAULT_MIN_SIMILARITY  # MinHash estimate of shingle Jaccard
    near_duplicate_shingle: int = minhash.SHINGLE  # words a shingle
    near_duplicate_bands: int = minhash.BANDS  # LSH bands of the 128-value signature
    near_duplicate_min_words: int = minhash.MIN_WORDS  # shorter transcripts are never near-duplicates
    # declared and measured duration may differ by this much (mp3 padding), or 5%, whichever is more
    duration_tolerance_ms: int = 250
    # a YODAS2 segment may end this far past its recording's audio: it is cut where the audio ends
    # (caption times run on the video's clock; its audio track often ends a little earlier)
    overrun_tolerance_ms: int = 500
    workers: int = 0  # decode tasks at once; 0: as many as the cluster's CPUs allow
    cpus_per_worker: float = 1.0


def normalize_text(text: str | None) -> str:
    return " ".join(unicodedata.normalize("NFC", text or "").split())


_PUNCTUATION = re.compile(r"^[^\w]+|[^\w-]+$")


def words_of(text: str) -> list[str]:
    """Lower-cased whitespace tokens without surrounding punctuation (a trailing '-' marks a fragment)."""
    return [token for token in (_PUNCTUATION.sub("", t.lower()) for t in text.split()) if token]


def longest_repeat_run(words: list[str]) -> int:
    """Longest run of one word repeated; a fragment ('b-') repeats the word it begins."""
    longest = run = 1 if words else 0
    for previous, word in zip(words, words[1:]):
        stem = previous.rstrip("-")
        repeated = word == previous or (previous.endswith("-") and stem and word.startswith(stem))
        run = run + 1 if repeated else 1
        longest = max(longest, run)
    return longest


def filler_share(words: list[str], fillers: set[str]) -> float:
    return sum(word in fillers for word in words) / len(words) if words else 0.0


def check_text(text: str, language: str, config: IngestConfig) -> None:
    if not text:
        raise Rejected(Reason.EMPTY_TEXT, "transcript is empty")
    share = languages.foreign_letter_share(text, language)
    if share > config.max_foreign_letter_share:
        raise Rejected(Reason.FOREIGN_SCRIPT, f"{share:.0%} of letters outside the scripts of {language}")
    words = words_of(text)
    fillers = set(config.filler_words.get(language, ()))
    if fillers and filler_share(words, fillers) > config.max_filler_share:
        raise Rejected(Reason.FILLER_WORDS, f"{filler_share(words, fillers):.0%} filler words")
    run = longest_repeat_run(words)
    if run > config.max_repeat_run:
        raise Rejected(Reason.STUTTER, f"a word repeated {run} times in a row")


def label_scores(text: str, language_code: str, config: IngestConfig) -> dict[str, float]:
    """The transcript's label-quality scores; the first over its bound rejects the utterance."""
    found = scores.label_scores(text, language_code, {"boilerplate": config.boilerplate_file,
                                                      "inappropriate": config.inappropriate_file})
    over = scores.first_over(found, vars(config))
    if over is not None:
        raise Rejected(*over)
    return found


def check_language(code: str | None, config: IngestConfig) -> str:
    language = languages.normalize(code)
    if language is None:
        raise Rejected(Reason.UNKNOWN_LANGUAGE, f"language {code!r} is not an ISO 639 code")
    if config.languages and language not in config.languages:
        raise Rejected(Reason.LANGUAGE_FILTERED, f"{language} not in {config.languages}")
    return language


def check_segment(meta: dict, config: IngestConfig) -> None:
    """A YODAS2 segment's subset (`ingest.subsets`) and how far it ran past its recording's audio."""
    subset = meta.get(yodas2.META_SUBSET)
    if config.subsets and subset not in config.subsets:
        raise Rejected(Reason.SUBSET_FILTERED, f"subset {subset} not in {config.subsets}")
    overrun = meta.get(yodas2.META_OVERRUN_MS, 0)
    if overrun > config.overrun_tolerance_ms:
        raise Rejected(Reason.SEGMENT_OUT_OF_RANGE, f"{meta.get('start_ms')}-{meta.get('end_ms')} ms ends {overrun} ms "
                       f"past the recording's audio (ingest.overrun_tolerance_ms = {config.overrun_tolerance_ms})")


def check_audio(data: bytes | None, declared_ms: int | None, config: IngestConfig) -> audio.Decoded:
    try:
        decoded = audio.decode(data or b"")
    except audio.AudioDecodeError as error:
        raise Rejected(Reason.DECODE_ERROR, str(error)) from None
    if len(decoded.samples) == 0 or not decoded.samples.any():
        raise Rejected(Reason.EMPTY_AUDIO, f"{len(decoded.samples)} samples, all silent")
    measured = decoded.duration_ms
    if declared_ms is not None:
        tolerance = max(config.duration_tolerance_ms, declared_ms // 20)
        if abs(measured - declared_ms) > tolerance:
            raise Rejected(Reason.DURATION_MISMATCH, f"decodes to {measured} ms, source says {declared_ms} ms")
    if measured < config.min_duration_ms:
        raise Rejected(Reason.TOO_SHORT, f"{measured} ms < {config.min_duration_ms} ms")
    if measured > config.max_duration_ms:
        raise Rejected(Reason.TOO_LONG, f"{measured} ms > {config.max_duration_ms} ms")
    return decoded


def ingest_record(record: dict, config: IngestConfig) -> dict:
    """One source record -> the utterance columns; raises Rejected."""
    if record.get(source_record.SOURCE) == yodas2.Yodas2Reader.source:  # other sources' meta is theirs to fill
        check_segment(json.loads(record[source_record.META] or "{}"), config)
    text = normalize_text(record[source_record.TEXT])
    language = check_language(record[source_record.LANGUAGE], config)
    quality = record[source_record.QUALITY]
    if config.min_quality is not None and quality is not None and quality < config.min_quality:
        raise Rejected(Reason.LOW_QUALITY, f"quality {quality:.2f} < {config.min_quality}")
    check_text(text, language, config)
    quality_of_label = label_scores(text, language, config)
    data = record[source_record.AUDIO]
    decoded = check_audio(data, record[source_record.DECLARED_DURATION_MS], config)
    return {
        utterance.AUDIO: data,
        utterance.AUDIO_FORMAT: audio.sniff_format(data),
        utterance.SAMPLE_RATE: decoded.sample_rate,
        utterance.DURATION_MS: decoded.duration_ms,
        utterance.TEXT: text,
        utterance.LANGUAGE: language,
        utterance.SPEAKER: record[source_record.SPEAKER],
        utterance.QUALITY: quality,
        utterance.RECORDING: record[source_record.RECORDING],
        utterance.RECORDING_START_MS: record[source_record.RECORDING_START_MS],
        utterance.SEGMENT_INDEX: record[source_record.SEGMENT_INDEX],
        utterance.LABEL_SCORES: quality_of_label,
        utterance.META: record[source_record.META],
    }


_PAYLOAD = [name for name in utterance.SCHEMA.names if name not in (utterance.ID, utterance.SOURCE)]
OUTPUT_SCHEMA = stream.in_flight(utterance.SCHEMA)


def transform(batch: pa.Table, config: IngestConfig) -> pa.Table:
    """In-flight source records -> in-flight utterances (same rows, same order)."""
    rows = []
    for record in batch.to_pylist():
        row = {name: record[name] for name in (utterance.ID, utterance.SOURCE, *stream.ENVELOPE_NAMES)}
        row.update(dict.fromkeys(_PAYLOAD))
        if record[stream.REJECT_REASON] is None:
            try:
                row.update(ingest_record(record, config))
            except Rejected as rejected:
                stream.mark_rejected(row, _PAYLOAD, NAME, rejected.reason, rejected.detail)
            except Exception as error:  # one bad sample must not take the run down: record it, show it
                traceback.print_exc()
                stream.mark_rejected(row, _PAYLOAD, NAME, Reason.STAGE_ERROR, f"{type(error).__name__}: {error}"[:300])
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def preflight(config: IngestConfig) -> None:
    if config.source not in AUDIO_SOURCES:
        raise StageConfigError(f"unknown source {config.source!r} for ingest; speech corpora are {', '.join(AUDIO_SOURCES)}"
                               + ("; a text corpus goes to --stage synthesize" if config.source == "text" else ""))
    if config.subsets and config.source != "yodas2":
        raise StageConfigError(f"ingest.subsets chooses YODAS2 subsets (en000, en100, ...); the source is {config.source}")
    named = [name for name in config.subsets if not isinstance(name, str) or not yodas2.SUBSET_NAME.match(name)]
    if named:
        raise StageConfigError(f"ingest.subsets: {named[0]!r} is not a YODAS2 subset name like en000 or en100")
    if config.overrun_tolerance_ms < 0:
        raise StageConfigError(f"ingest.overrun_tolerance_ms is {config.overrun_tolerance_ms}; it is 0 or more")
    problem = near_duplicate_settings(config).problem()
    if problem:
        raise StageConfigError(f"ingest.{problem}")


def near_duplicate_settings(config: IngestConfig) -> NearDuplicateSettings:
    return NearDuplicateSettings(config.near_duplicates, config.near_duplicate_similarity, config.near_duplicate_shingle,
                                 config.near_duplicate_bands, config.near_duplicate_min_words)


STAGE = Stage(
    name=NAME,
    consumes=SOURCES,
    contract=utterance.SCHEMA,
    description="source corpora (Emilia, Emilia-YODAS, YODAS2, manifest, lhotse) -> utterance rows",
    config_type=IngestConfig,
    make_transform=lambda config: functools.partial(transform, config=config),
    map_options=lambda config: MapOptions(concurrency=config.workers, num_cpus=config.cpus_per_worker),
    preflight=preflight,
)
