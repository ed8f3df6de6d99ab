"""The pure parts of alignment: transcript words, cutting long audio, sharing words, guarding timings."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sylm_data.languages import punctuated_ends, punctuated_ends_batch, word_offset_table, word_offsets

from sylm_data.align.words import (
    SAMPLE_RATE,
    AlignmentRejected,
    check_and_repair,
    clause_ends,
    cut_points,
    edge_pileup,
    share_words,
    speech_amounts,
    transcript_words,
)


def test_transcript_words_drop_punctuation_and_split_cjk():
    assert transcript_words("Well, it's a well-known fact — isn't it?", "en") == ["Well", "it's", "a", "well-known", "fact", "isn't", "it"]
    assert transcript_words("今天，天气好。", "zh") == ["今", "天", "天", "气", "好"]
    assert transcript_words("Число 42!", "ru") == ["Число", "42"]
    assert transcript_words(" ... !! ", "en") == []


_TEXT = st.lists(st.sampled_from(list("ab c.,'-  éü中文“”\t?!") + ["the ", "don't", "U.S."]), max_size=20).map("".join)


@settings(deadline=None, max_examples=300)
@example([("don't the ab b", "initials")], False)  # "t" and "b" are found inside "don't" and "ab"
@given(st.lists(st.tuples(st.one_of(st.none(), _TEXT), st.sampled_from(["as is", "extra", "reversed", "initials"])), max_size=6),
       st.booleans())
def test_word_offsets_of_a_batch_are_those_of_each_transcript(cases, sliced):
    """The batch's offsets equal str.find word by word, then each transcript's length comes, for
    words the transcript holds, lacks, reorders or holds inside other words."""
    texts, words = [text for text, _ in cases], []
    for text, change in cases:
        found = transcript_words(text or "", "en")
        words.append({"as is": found, "extra": found + ["zz"], "reversed": found[::-1],
                      "initials": [word[0] for word in found]}[change])
    bounds = np.cumsum([0] + [len(found) for found in words])
    text_array = pa.array(["before"] + texts, pa.string()).slice(1) if sliced else pa.array(texts, pa.string())
    got = word_offset_table(text_array, pa.array([word for found in words for word in found], pa.string()), bounds)
    assert got.tolist() == [offset for text, found in zip(texts, words) for offset in [*word_offsets(text or "", found), len(text or "")]]


_MARKED_TEXT = st.lists(st.sampled_from(list("ab c.,'-  éü中文“”?!…。！？") + ["the ", "U.S.", "ab.", "?!"]), max_size=20).map("".join)


@settings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(st.one_of(st.none(), _MARKED_TEXT), st.sampled_from(["as is", "extra", "reversed"])), max_size=6),
       st.booleans(), st.data())
def test_punctuated_ends_of_a_batch_are_those_of_each_transcript(cases, sliced, data):
    """Marks after a word, inside one (U.S.), of several bytes, in a row, before any word; only the texts asked for."""
    texts, words = [text for text, _ in cases], []
    for text, change in cases:
        found = transcript_words(text or "", "en")
        words.append({"as is": found, "extra": found + ["zz"], "reversed": found[::-1]}[change])
    bounds = np.cumsum([0] + [len(found) for found in words])
    flat = pa.array([word for found in words for word in found], pa.string())
    text_array = pa.array(["before."] + texts, pa.string()).slice(1) if sliced else pa.array(texts, pa.string())
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, max(len(texts) - 1, 0)), max_size=len(texts)))), np.int64)
    marks = {".", "!", "?", "…", "。", "！", "？"}
    table = word_offset_table(text_array, flat, bounds)
    got = punctuated_ends_batch(text_array, flat, bounds, np.delete(table, bounds[1:] + np.arange(len(bounds) - 1)), marks, rows)
    places = list(zip(*(column.tolist() for column in got)))
    assert places == sorted(set(places))  # each once, in order: the compiled pass's output is sized for that
    assert set(places) == {
        (row, count) for row in rows.tolist() for count in punctuated_ends(texts[row] or "", words[row], marks)}


def test_punctuated_ends_take_each_text_once_and_in_order():
    """The compiled pass's output holds each (text, word count) once, "?!" and ".." included: a
    text twice is refused."""
    texts, words = pa.array(["Go?! Now..", "Stop."]), pa.array(["Go", "Now", "Stop"])
    bounds, offsets = np.array([0, 2, 3]), np.array([0, 5, 0])
    found = punctuated_ends_batch(texts, words, bounds, offsets, {".", "?", "!"}, np.array([0, 1]))
    assert [column.tolist() for column in found] == [[0, 0, 1], [1, 2, 1]]
    for rows in ([0, 0], [1, 0], [2], [-1]):
        with pytest.raises(ValueError, match="each once"):
            punctuated_ends_batch(texts, words, bounds, offsets, {"."}, np.array(rows))


def test_cut_points_fall_in_the_pauses_and_keep_pieces_within_the_limit():
    rng = np.random.default_rng(0)
    second = SAMPLE_RATE
    speech = [rng.normal(0, 0.3, 40 * second), rng.normal(0, 0.3, 50 * second), rng.normal(0, 0.3, 45 * second)]
    pause = np.zeros(second // 2)
    samples = np.concatenate([speech[0], pause, speech[1], pause, speech[2]]).astype(np.float32)
    cuts = cut_points(samples, max_piece_ms=60_000)
    bounds = [0, *cuts, len(samples)]
    assert all(end - start <= 60 * second for start, end in zip(bounds, bounds[1:]))
    pauses = [(40 * second, 40.5 * second), (90.5 * second, 91 * second)]
    assert len(cuts) == 2 and all(start <= cut <= end for cut, (start, end) in zip(cuts, pauses))
    assert cut_points(samples[: 30 * second], max_piece_ms=60_000) == []


@given(st.lists(st.text("abcdefghij", min_size=1, max_size=9), min_size=1, max_size=40),
       st.lists(st.integers(1, 1000), min_size=1, max_size=6))
def test_shared_words_stay_in_order_and_none_is_lost(words, lengths):
    shares = share_words(words, lengths)
    assert len(shares) == len(lengths)
    assert [word for share in shares for word in share] == words


def test_words_are_shared_by_speech_not_by_pauses():
    second = SAMPLE_RATE
    loud = np.ones(10 * second, np.float32) * 0.5
    samples = np.concatenate([loud, np.zeros(10 * second, np.float32), loud])
    amounts = speech_amounts(samples, [0, 20 * second, 30 * second])
    assert amounts[0] == pytest.approx(amounts[1], rel=0.01)  # the first piece's pause does not count
    assert share_words(["aaaa"] * 10, amounts) == [["aaaa"] * 5, ["aaaa"] * 5]


def test_degenerate_timings_are_rejected():
    with pytest.raises(AlignmentRejected, match="every timestamp is 0"):
        check_and_repair([(0, 0), (0, 0), (0, 0)], 3000, 5000)
    with pytest.raises(AlignmentRejected, match="after the audio ends"):
        check_and_repair([(100, 200), (141_280, 141_280)], 3000, 5000)
    with pytest.raises(AlignmentRejected, match="lasts 4800 ms"):
        check_and_repair([(0, 100), (200, 5000)], 6000, 4000)
    with pytest.raises(AlignmentRejected, match="no words"):
        check_and_repair([], 3000, 5000)


def test_non_monotonic_timings_are_repaired():
    assert check_and_repair([(0, 300), (500, 400), (450, 700), (900, 3100)], 3000, 5000) == [
        (0, 300), (500, 500), (500, 700), (900, 3000)]


@given(st.lists(st.tuples(st.integers(-500, 4000), st.integers(-500, 4000)), min_size=2, max_size=30))
def test_repaired_timings_are_ordered_and_inside_the_audio(timings):
    try:
        repaired = check_and_repair(timings, 3000, 10_000)
    except AlignmentRejected:
        return
    assert all(0 <= start <= end <= 3000 for start, end in repaired)
    assert [start for start, _ in repaired] == sorted(start for start, _ in repaired)


def test_clause_ends_follow_punctuation():
    text = "Hello there, friend. How are you? Fine"
    assert clause_ends(text, transcript_words(text, "en")) == {2, 3, 6}
    assert clause_ends("今天好。明天", ["今", "天", "好", "明", "天"]) == {3}


def test_piece_boundaries_snap_to_clause_ends():
    words = ["w"] * 20
    assert [len(s) for s in share_words(words, [1, 1])] == [10, 10]
    assert [len(s) for s in share_words(words, [1, 1], breaks={7, 16})] == [7, 13]
    assert [len(s) for s in share_words(words, [1, 1], breaks={1}, snap=3)] == [10, 10]  # too far to snap


def test_words_piled_into_a_piece_edge_bin_are_named():
    spread = [(0, 80), (80, 400), (400, 720), (720, 1000)]
    assert edge_pileup(spread, 1000, 80) is None
    assert edge_pileup([(0, 0), (0, 80), (80, 400)], 1000, 80) is None  # two in one bin: a short word can
    assert edge_pileup([(0, 0), (0, 0), (0, 80), (80, 400)], 1000, 80) == "3 words piled up in the first 80 ms of a 1000 ms piece"
    assert edge_pileup([(80, 400), (920, 1000), (960, 1000), (1000, 1000)], 1000, 80) == \
        "3 words piled up in the last 80 ms of a 1000 ms piece"
