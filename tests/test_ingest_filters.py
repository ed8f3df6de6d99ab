"""The ingest checks as pure functions, and the filters through the stage transform."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sylm_data import languages
from sylm_data.pipeline.partitions import read_source_partition
from sylm_data.sample import MANIFEST
from sylm_data.sources import READERS
from sylm_data.stages import ingest
from sylm_data.pipeline.stage import Rejected
from sylm_data.quality import scores
from sylm_data.schemas import utterance
from sylm_data.stages.ingest import IngestConfig


@pytest.mark.parametrize(
    ("code", "expected"),
    [("en", "en"), ("EN", "en"), ("en-US", "en"), ("en_gb", "en"), ("eng", "en"), ("zh-CN", "zh"),
     ("yue", "yue"), ("Japanese", "ja"), ("xx", None), ("", None), (None, None), ("klingon", None),
     # YouTube's withdrawn codes, as in YODAS2's subsets iw000, sh000, ...
     ("iw", "he"), ("in", "id"), ("ji", "yi"), ("jw", "jv"), ("mo", "ro"), ("sh", "sr")],
)
def test_language_codes_normalise_to_iso_639_1(code, expected):
    assert languages.normalize(code) == expected


def test_foreign_letters_are_counted_against_the_language_scripts():
    assert languages.foreign_letter_share("Hello there", "en") == 0
    assert languages.foreign_letter_share("Hello мир", "en") == pytest.approx(3 / 8)
    assert languages.foreign_letter_share("今日はいい天気", "ja") == 0
    assert languages.foreign_letter_share("hello 123 !!", "sw") == 0
    assert languages.foreign_letter_share("Привет", "xx") == 0  # unknown languages are not checked
    assert languages.foreign_letter_share("Dobar dan", "sr") == languages.foreign_letter_share("Добар дан", "sr") == 0


def test_text_checks_reject_with_their_reasons():
    config = IngestConfig()
    ingest.check_text("The river ran past the mill.", "en", config)
    cases = {
        "": "empty_text",
        "Hello Привет мир друзья": "foreign_script",
        "um uh er the um": "filler_words",
        "I I I I want it": "stutter",
        "b- b- b- b- but why": "stutter",
    }
    for text, reason in cases.items():
        with pytest.raises(Rejected) as raised:
            ingest.check_text(text, "en", config)
        assert raised.value.reason == reason, text
    ingest.check_text("no no no, not that", "en", config)  # three in a row is speech, not a stutter


@given(st.lists(st.sampled_from(["a", "b", "a-", "ab"]), max_size=12))
def test_longest_repeat_run_is_between_one_and_the_word_count(words):
    run = ingest.longest_repeat_run(words)
    assert (run == 0) == (not words)
    assert run <= len(words)
    if words and len(set(words)) == 1 and not words[0].endswith("-"):
        assert run == len(words)


@given(st.text(max_size=80))
def test_normalised_text_has_single_spaces_and_is_idempotent(text):
    normal = ingest.normalize_text(text)
    assert normal == normal.strip() and "  " not in normal
    assert ingest.normalize_text(normal) == normal


def test_duration_and_quality_filters(utterances):
    good = utterances[0]
    declared = round(good.duration_s * 1000)
    ingest.check_audio(good.audio, declared, IngestConfig())
    with pytest.raises(Rejected, match="ms <") as short:
        ingest.check_audio(good.audio, declared, IngestConfig(min_duration_ms=10_000))
    assert short.value.reason == "too_short"
    with pytest.raises(Rejected) as long:
        ingest.check_audio(good.audio, None, IngestConfig(max_duration_ms=1_000))
    assert long.value.reason == "too_long"
    record = {"text": good.text, "language": "en", "quality": 2.1, "audio": good.audio, "declared_duration_ms": declared,
              "speaker": None, "recording": None, "recording_start_ms": None, "segment_index": None, "meta": None}
    with pytest.raises(Rejected) as low:
        ingest.ingest_record(record, IngestConfig(min_quality=3.0))
    assert low.value.reason == "low_quality"
    assert ingest.ingest_record(record | {"quality": None}, IngestConfig(min_quality=3.0))["quality"] is None


def test_an_unexpected_error_on_one_sample_is_a_stage_error_reject(utterances, monkeypatch):
    calls = []

    def flaky_decode(data, target_rate=None):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated")
        return real_decode(data, target_rate)

    real_decode = ingest.audio.decode
    monkeypatch.setattr(ingest.audio, "decode", flaky_decode)
    partition = READERS["manifest"].partitions([str(MANIFEST)])[0]
    batch = next(read_source_partition(partition, "ingest", 3))
    reasons = ingest.transform(batch, IngestConfig())["reject_reason"].to_pylist()
    assert reasons == [None, "stage_error", None]


@pytest.mark.parametrize("text, reason", [
    ("thank you so much thank you so much thank you so much thank you so much", "hallucination_loop"),
    ("thanks for watching", "boilerplate_phrase"),
    ("der Fluss lief an der alten Mühle vorbei und dann kam er zum Meer", "language_mismatch"),
    ("so I I went to the the shop and and we we bought it", "restarts"),
])
def test_label_scores_are_kept_and_one_over_its_bound_is_a_reject(text, reason):
    config = IngestConfig()
    with pytest.raises(Rejected) as rejected:
        ingest.label_scores(text, "en", config)
    assert rejected.value.reason == reason
    unbounded = IngestConfig(**{check.threshold: None for check in scores.CHECKS})
    kept = ingest.label_scores(text, "en", unbounded)
    assert set(kept) == set(utterance.SCORES.names) - set(utterance.ALIGNMENT_SCORES) and max(kept.values()) > 0


def test_a_clean_transcript_passes_with_low_scores_and_a_user_list_adds_words(tmp_path):
    text = "The river ran past the old mill before it reached the sea."
    kept = ingest.label_scores(text, "en", IngestConfig())
    assert kept == {name: 0.0 for name in utterance.SCORES.names if name not in (*utterance.ALIGNMENT_SCORES, "language_mismatch")} | {
        "language_mismatch": kept["language_mismatch"]} and kept["language_mismatch"] < 0.5
    words = tmp_path / "words.tsv"
    words.write_text("en\tmill\n")
    assert ingest.label_scores(text, "en", IngestConfig(inappropriate_file=str(words)))["inappropriate_share"] > 0
    with pytest.raises(Rejected, match="inappropriate_share"):
        ingest.label_scores(text, "en", IngestConfig(inappropriate_file=str(words), max_inappropriate_share=0.0))
