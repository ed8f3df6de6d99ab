"""interleave: chunking properties, the speech ratio, sample kinds, determinism, shards end to end."""

import functools
import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import runner
from sylm_data.pipeline.stage import in_slices
from sylm_data.sample import MANIFEST
from sylm_data.schemas import sample, stream, tokenized
from sylm_data.documents import render, spans
from sylm_data.stages import interleave
from tests.conftest import commit_rows, serial


@st.composite
def timed_utterance(draw):
    """Words with gaps between them, and contiguous units on a 20 ms grid covering the audio."""
    word_count = draw(st.integers(1, 25))
    position, word_starts, word_ends = draw(st.integers(0, 300)), [], []
    for _ in range(word_count):
        position += draw(st.integers(0, 200))
        word_starts.append(position)
        position += draw(st.integers(40, 600))
        word_ends.append(position)
    duration = position + draw(st.integers(0, 400))
    frames = -(-duration // 20)
    cuts = sorted(draw(st.sets(st.integers(1, max(frames - 1, 1)), max_size=frames // 3)))
    edges = [0, *[c * 20 for c in cuts if c < frames], frames * 20]
    return word_starts, word_ends, edges[:-1], edges[1:]


def batch_cuts(utterances, tolerance) -> spans.Cuts:
    word_starts, word_ends, unit_starts, unit_ends = zip(*utterances)
    return spans.word_cuts([len(w) for w in word_starts], sum(word_starts, []), sum(word_ends, []),
                           [len(u) for u in unit_starts], sum(unit_starts, []), sum(unit_ends, []), tolerance)


@settings(max_examples=150, deadline=None)
@given(st.lists(timed_utterance(), min_size=1, max_size=4), st.sampled_from([0, 10, 40]), st.data())
def test_chunks_keep_every_word_and_unit_once_and_cut_on_both_grids(utterances, tolerance, data):
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, len(utterances) - 1), min_size=1))))
    word_sizes, unit_sizes = (np.array([len(u[part]) for u in utterances]) for part in (0, 2))
    cuts = batch_cuts(utterances, tolerance)
    pieces = spans.chunks(cuts, word_sizes, unit_sizes, rows)
    assert sorted(set(pieces.rows.tolist())) == rows.tolist() and (np.diff(pieces.rows) >= 0).all()
    words, units, per_row = spans.chunk_sizes(cuts, word_sizes, unit_sizes, rows)  # what member rows keep of them
    assert words.tolist() == pieces.words.tolist() and units.tolist() == (pieces.end_unit - pieces.first_unit).tolist()
    assert per_row.tolist() == [int((pieces.rows == row).sum()) for row in rows.tolist()]
    for row in rows.tolist():
        word_starts, word_ends, unit_starts, unit_ends = utterances[row]
        mine = pieces.take(np.flatnonzero(pieces.rows == row))
        assert mine.first_word.tolist() == [0] + mine.end_word[:-1].tolist() and mine.end_word[-1] == len(word_starts)
        assert mine.first_unit.tolist() == [0] + mine.end_unit[:-1].tolist() and mine.end_unit[-1] == len(unit_starts)
        for first_word, first_unit in zip(mine.first_word[1:].tolist(), mine.first_unit[1:].tolist()):
            boundary = unit_starts[first_unit]
            assert unit_ends[first_unit - 1] == boundary
            assert word_ends[first_word - 1] - tolerance <= boundary <= word_starts[first_word] + tolerance
        assert (mine.words > 0).all()


def nearest_cuts(word_starts, word_ends, unit_starts, unit_ends, tolerance):
    """Obviously correct: for each gap, every unit boundary within tolerance, the nearest to its middle."""
    cuts = {}
    for k in range(1, len(word_starts)):
        middle = (word_ends[k - 1] + word_starts[k]) / 2
        fitting = [j for j in range(1, len(unit_starts)) if unit_ends[j - 1] == unit_starts[j]
                   and word_ends[k - 1] - tolerance <= unit_starts[j] <= word_starts[k] + tolerance]
        if fitting:
            cuts[k] = min(fitting, key=lambda j: (abs(unit_starts[j] - middle), j))
    return cuts


@settings(max_examples=100, deadline=None)
@given(st.lists(timed_utterance(), min_size=1, max_size=5), st.sampled_from([0, 10, 40]))
def test_cuts_of_a_batch_are_each_utterances_nearest_cuts(utterances, tolerance):
    cuts = batch_cuts(utterances, tolerance)
    got = [{} for _ in utterances]
    for row, word, unit in zip(*(column.tolist() for column in cuts)):
        got[row][word] = unit
    assert got == [nearest_cuts(*utterance, tolerance) for utterance in utterances]


def test_sentence_granularity_cuts_only_at_sentence_ends():
    text = "The river ran. It reached the sea, slowly!"
    words = ["The", "river", "ran", "It", "reached", "the", "sea", "slowly"]
    assert spans.sentence_ends(text, words) == {3, 8}
    starts, ends = [100 * k for k in range(8)], [100 * k + 60 for k in range(8)]  # a 40 ms gap after every word
    timed = ([8], starts, ends, [16], [50 * j for j in range(16)], [50 * j + 50 for j in range(16)], 10)  # 50 ms units
    at_ends = spans.word_cuts(*timed, at=(np.array([0, 0]), np.array([3, 8])))  # word 8 ends the utterance: no gap there
    assert at_ends.words.tolist() == [3] and at_ends.units.tolist() == [6]
    pieces = spans.chunks(at_ends, np.array([8]), np.array([16]), np.array([0]))
    assert list(zip(pieces.first_word.tolist(), pieces.end_word.tolist())) == [(0, 3), (3, 8)]
    for rows, words in (([0, 0], [8, 3]), ([0, 0], [3, 3]), ([1], [3])):
        with pytest.raises(ValueError, match="each once"):
            spans.word_cuts(*timed, at=(np.array(rows), np.array(words)))


@st.composite
def timed_utterance_with_holes(draw):
    """A timed utterance with units dropped and shortened: boundaries where one unit does not end
    where the next starts, and gaps with no boundary at all."""
    word_starts, word_ends, unit_starts, unit_ends = draw(timed_utterance())
    kept = [index for index in range(len(unit_starts)) if index == 0 or draw(st.booleans())]
    shortened = [unit_ends[index] - (10 if unit_ends[index] - unit_starts[index] > 10 and draw(st.booleans()) else 0) for index in kept]
    return word_starts, word_ends, [unit_starts[index] for index in kept], shortened


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(timed_utterance(), timed_utterance_with_holes()), min_size=1, max_size=5), st.sampled_from([0, 10, 40]),
       st.lists(st.tuples(st.integers(0, 4), st.integers(0, 26)), max_size=30))
# the nearest boundary lies behind a unit that is none (120 ms, not 290), or beyond one (230 ms, not 100)
@example([([0, 300], [100, 400], [0, 120, 160, 290], [120, 150, 290, 400])], 10, [(0, 1)])
@example([([0, 300], [100, 400], [0, 100, 205, 230], [100, 180, 230, 400])], 10, [(0, 1)])
def test_cuts_at_given_gaps_are_the_nearest_cuts_there(utterances, tolerance, places):
    """Sentence granularity looks only at the gaps before given places (edges and places past the
    last word included), and finds there what looking everywhere finds."""
    places = sorted({place for place in places if place[0] < len(utterances)})
    word_starts, word_ends, unit_starts, unit_ends = zip(*utterances)
    rows, words = (np.array([place[part] for place in places], np.int64) for part in (0, 1))
    at = spans.word_cuts([len(w) for w in word_starts], sum(word_starts, []), sum(word_ends, []), [len(u) for u in unit_starts],
                         sum(unit_starts, []), sum(unit_ends, []), tolerance, at=(rows, words))
    expected = [(row, word, unit) for row, utterance in enumerate(utterances)
                for word, unit in sorted(nearest_cuts(*utterance, tolerance).items()) if (row, word) in set(places)]
    assert list(zip(*(column.tolist() for column in at))) == expected


def one_by_one_speech(chunk_words, key, speech_ratio, span_mean, span_in_words, first_draw, max_tries=100):
    """The span policy written plainly for one utterance: the batch must choose exactly this."""
    def draw(number):
        return spans.uniforms(np.array([key], np.uint64), number)[0]

    count, target = len(chunk_words), speech_ratio * sum(chunk_words)
    spoken, speech, over = 0, [False] * count, None
    for attempt in range(max_tries):
        free = [index for index in range(count) if not speech[index]]
        if spoken >= target or not free or (over is not None and all(spoken + chunk_words[i] > target for i in free)):
            break
        wanted = max(1, int(spans.poisson(np.array([draw(first_draw + 2 * attempt)]), span_mean)[0]))
        index = min(int(draw(first_draw + 2 * attempt + 1) * count), count - 1)
        taken = 0
        while index < count and not speech[index] and taken < wanted:
            if spoken + chunk_words[index] > target:
                over = index if over is None else over
                break
            speech[index], spoken = True, spoken + chunk_words[index]
            taken += chunk_words[index] if span_in_words else 1
            index += 1
    last_draw = draw(first_draw + 2 * max_tries)
    if over is not None and spoken > 0 and speech.count(False) > 1:
        speech[over] = last_draw < (target - spoken) / chunk_words[over]
    elif spoken == 0 and target > 0 and count > 1:
        start = min(int(last_draw * count), count - 1)
        speech[next(i for i in ((start + k) % count for k in range(count)) if chunk_words[i] == min(chunk_words))] = True
    return speech


@settings(max_examples=200, deadline=None)
@given(st.integers(-2**70, 2**70), st.lists(st.text(max_size=140) | st.sampled_from(["", "x" * 126, "é" * 64, "x" * 256]),
                                             max_size=8), st.booleans())
@example(0, ["x" * 126, "x" * 254, ""], False)  # "0:" and these fill their last block exactly
def test_stream_keys_are_hashlibs_blake2b_of_seed_and_id(seed, ids, as_arrow):
    """One block and several, a message that fills its last block exactly, none at all; a list or Arrow strings."""
    expected = [int.from_bytes(hashlib.blake2b(f"{seed}:{item}".encode(), digest_size=8).digest(), "little") for item in ids]
    given_ids = pa.chunked_array([pa.array(ids, pa.string())]) if as_arrow else ids
    assert spans.stream_keys(seed, given_ids).tolist() == expected


def test_a_null_id_keys_no_stream():
    with pytest.raises(ValueError, match="null"):
        spans.stream_keys(0, pa.array(["a", None]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=30), min_size=1, max_size=6),
       st.sampled_from([0.1, 0.3, 0.7, 1.0]), st.sampled_from([1.0, 3.0, 10.0, 45.0]), st.booleans(), st.integers(0, 3))
def test_a_batch_chooses_each_utterances_spans_as_it_would_alone(utterances, ratio, span_mean, span_in_words, first_draw):
    keys = spans.stream_keys(7, [f"u{index}" for index in range(len(utterances))])
    rows = np.repeat(np.arange(len(utterances)), [len(chunk_words) for chunk_words in utterances])
    got = spans.choose_speech(np.concatenate(utterances), rows, keys, ratio, span_mean, span_in_words, first_draw)
    expected = [one_by_one_speech(words, key, ratio, span_mean, span_in_words, first_draw)
                for words, key in zip(utterances, keys.tolist())]
    assert got.tolist() == sum(expected, [])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=30), min_size=1, max_size=6),
       st.sampled_from([1.0, 4.0, 10.0]), st.booleans())
def test_consecutive_spans_take_poisson_sized_runs_from_the_start(utterances, span_mean, span_in_words):
    keys = spans.stream_keys(3, [f"u{index}" for index in range(len(utterances))])
    rows = np.repeat(np.arange(len(utterances)), [len(chunk_words) for chunk_words in utterances])
    got = spans.consecutive_spans(np.concatenate(utterances), rows, keys, span_mean, span_in_words).tolist()
    expected = []
    for chunk_words, key in zip(utterances, keys.tolist()):
        at, number = 0, 0
        while at < len(chunk_words):
            wanted = max(1, int(spans.poisson(spans.uniforms(np.array([key], np.uint64), number), span_mean)[0]))
            taken = 0
            while at < len(chunk_words) and taken < wanted:
                expected.append(number)
                taken += chunk_words[at] if span_in_words else 1
                at += 1
            number += 1
    assert got == expected


def test_draws_are_uniform_and_poisson_counts_have_their_mean():
    keys = spans.stream_keys(0, [f"u{index}" for index in range(20000)])
    draws = spans.uniforms(keys, 5)
    assert 0 <= draws.min() and draws.max() < 1 and abs(draws.mean() - 0.5) < 0.01
    assert (spans.uniforms(keys[:3], np.array([5, 5, 5])) == draws[:3]).all()  # one draw number for all, or one each
    for mean in (0.5, 10.0, 120.0):
        counts = spans.poisson(draws, mean)
        assert abs(counts.mean() - mean) < 4 * (mean / len(draws)) ** 0.5 and abs(counts.var() - mean) < 0.1 * mean


def splitmix64_draw(key: int, number: int) -> float:
    """SplitMix64 written plainly with Python ints: draw `number` of stream `key`."""
    mask = 2**64 - 1
    z = (key + (number + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def test_draws_are_splitmix64_with_wrapping_arithmetic():
    """The streams every stage's sample depends on: a change here would change every shard."""
    keys = np.concatenate([spans.stream_keys(3, ["a", "b", "c"]), np.array([0, 2**64 - 1], np.uint64)])
    for number in (0, 1, 7, 200):
        assert spans.uniforms(keys, number).tolist() == [splitmix64_draw(int(key), number) for key in keys.tolist()]
    assert spans.poisson(spans.uniforms(keys, 0), 0.0).tolist() == [0] * len(keys)


def test_the_speech_ratio_over_a_corpus_is_within_two_points_of_the_target():
    rng = np.random.default_rng(0)
    utterances = [rng.integers(1, 4, size=rng.integers(3, 40)) for _ in range(3000)]
    words = np.concatenate(utterances)
    rows = np.repeat(np.arange(len(utterances)), [len(u) for u in utterances])
    choice = spans.choose_speech(words, rows, spans.stream_keys(0, [f"u{i}" for i in range(len(utterances))]), 0.3, 10.0)
    assert abs(words[choice].sum() / words.sum() - 0.3) <= 0.02


def short_utterance(rng, index: int) -> dict:
    """8-15 words, 300 ms apart, that may be cut only between chunks of 1-5 words: a unit boundary
    sits in those gaps and every other unit boundary inside a word."""
    count = int(rng.integers(8, 16))
    chunk_ends = np.cumsum(rng.integers(1, 6, size=count))
    boundaries = sorted({300 * k + 100 for k in range(count)} | {300 * int(end) - 50 for end in chunk_ends if end < count})
    edges = [0, *boundaries, 300 * count]
    return row([(f"w{k}", 300 * k, 300 * k + 200) for k in range(count)],
               [(k % 16, start, end) for k, (start, end) in enumerate(zip(edges, edges[1:]))], text=" ".join(f"w{k}" for k in range(count)),
               id=f"manifest:s{index}")


def test_short_utterances_keep_the_ratio_and_the_kinds():
    rng = np.random.default_rng(1)
    config = interleave.InterleaveConfig()
    made = pa.Table.from_pylist(built([short_utterance(rng, index) for index in range(5000)], config))
    kinds = made["kind"].to_pylist()
    for kind, share in config.kinds.items():
        assert abs(kinds.count(kind) / len(kinds) - share) <= 0.02, kind
    mixed = made.filter(pa.compute.equal(made["kind"], "interleaved"))
    ratio = sum(mixed["speech_words"].to_pylist()) / sum(mixed["words"].to_pylist())
    assert abs(ratio - config.speech_ratio) <= 0.02


def row(words, units, text="The river ran past the mill.", id="manifest:x"):
    return {"id": id, "source": "manifest", "text": text, "language": "en",
            "words": [{"text": w, "start_ms": s, "end_ms": e} for w, s, e in words],
            "units": [u for u, _, _ in units], "unit_start_ms": [s for _, s, _ in units], "unit_end_ms": [e for _, _, e in units],
            "tokenizer": "mfcc:0:k16:u16:abc", "partition": "p", "partition_total": 1, "reject_stage": None,
            "reject_reason": None, "reject_detail": None}


def tokenized_rows(rows) -> pa.Table:
    """Rows as the tokenize stage hands them on (typed by its contract, however empty their lists)."""
    contract = stream.in_flight(tokenized.SCHEMA)
    return pa.Table.from_pylist(rows, schema=pa.schema([field for field in contract if field.name in rows[0]]))


def built(rows, config) -> list[dict]:
    return interleave.transform(tokenized_rows(rows), config).to_pylist()


WORDS = [("The", 0, 100), ("river", 120, 400), ("ran", 420, 600), ("past", 620, 800), ("the", 820, 900), ("mill", 920, 1200)]
UNITS = [(5, 0, 110), (6, 110, 410), (7, 410, 610), (8, 610, 810), (9, 810, 910), (10, 910, 1200)]


def test_samples_follow_the_contract_and_keep_the_transcript():
    config = interleave.InterleaveConfig(kinds={"interleaved": 1.0}, span_mean=2)
    [made] = built([row(WORDS, UNITS)], config)
    document = json.loads(made["json"])
    sample.validate(document)
    assert made["kind"] == document["kind"] == "interleaved"
    texts = [s["text"] for s in document["segments"] if s["modality"] == "text"]
    assert texts and all(text in "The river ran past the mill." for text in texts)  # slices of the transcript
    units = [u for s in document["segments"] if s["modality"] == "speech" for u in s["units"]]
    assert made["speech_words"] > 0 and made["units"] == len(units) and made["words"] == 6
    last = document["segments"][-1]
    if last["modality"] == "text":
        assert last["text"].endswith("mill.")  # punctuation comes from the transcript
    else:
        assert last["units"][-1] == 10
    assert units == [u for u, _, _ in UNITS if u in units]  # speech units keep their order
    assert built([row(WORDS, UNITS)], config) == [made]  # same id, same sample
    [speech_only] = built([row(WORDS, UNITS)], interleave.InterleaveConfig(kinds={"speech": 1.0}))
    assert json.loads(speech_only["json"]) == {"segments": [{"modality": "speech", "text": None, "units": [5, 6, 7, 8, 9, 10]}],
                                               "kind": "speech", "language": "en", "source_id": speech_only["id"],
                                               "source_ids": [speech_only["id"]], "synthetic": None}  # every key, null where absent: one schema
    assert speech_only["speech_words"] == 6 and speech_only["units"] == 6
    [text_only] = built([row(WORDS, UNITS, text="  The river ran past the mill. ")], interleave.InterleaveConfig(kinds={"text": 1.0}))
    assert json.loads(text_only["json"])["segments"] == [{"modality": "text", "text": "The river ran past the mill.", "units": None}]
    assert text_only["speech_words"] == text_only["units"] == 0


@settings(max_examples=80, deadline=None)
@given(timed_utterance(), st.sampled_from([1.0, 3.0, 10.0]), st.sampled_from(["word", "sentence"]), st.integers(0, 99))
def test_an_interleaved_sample_says_every_word_once_in_order_as_text_or_speech(utterance, span_mean, granularity, seed):
    word_starts, word_ends, unit_starts, unit_ends = utterance
    words = [f"w{index}" for index in range(len(word_starts))]
    text = " ".join(word + ("." if index % 4 == 3 else "") for index, word in enumerate(words))
    item = row(list(zip(words, word_starts, word_ends)), list(zip(range(len(unit_starts)), unit_starts, unit_ends)), text=text)
    config = interleave.InterleaveConfig(kinds={"interleaved": 1.0}, span_mean=span_mean, granularity=granularity, seed=seed)
    [made] = built([item], config)
    segments = json.loads(made["json"])["segments"]
    modalities = [s["modality"] for s in segments]
    assert all(list(s) == ["modality", "text", "units"] for s in segments)
    assert all(a != b for a, b in zip(modalities, modalities[1:]))  # runs of one modality are one segment
    said, next_word, next_unit = 0, 0, 0
    for segment in segments:
        if segment["modality"] == "text":
            indices = [int(word.rstrip(".")[1:]) for word in segment["text"].split()]
            assert indices == list(range(indices[0], indices[0] + len(indices)))
            assert (indices[0] == next_word) == (segment is segments[0])  # speech said the words in between
            if granularity == "sentence":  # text starts and ends at sentence boundaries
                assert indices[0] % 4 == 0 and (segment["text"].endswith(".") or indices[-1] == len(words) - 1)
            said, next_word = said + len(indices), indices[-1] + 1
        else:
            assert segment["units"] == list(range(segment["units"][0], segment["units"][0] + len(segment["units"])))
            assert not segment["units"] or segment["units"][0] >= next_unit
            next_unit = segment["units"][-1] + 1 if segment["units"] else next_unit
    assert said + made["speech_words"] == len(words) and made["units"] == sum(len(s["units"] or []) for s in segments)
    assert made["kind"] == ("interleaved" if len(segments) > 1 else modalities[0])


def test_a_sample_is_the_same_whatever_batch_it_comes_in():
    config = interleave.InterleaveConfig(span_mean=2)
    rows = [row(WORDS, UNITS, id=f"manifest:{n}") for n in range(40)]
    together = built(rows, config)
    assert {r["kind"] for r in together} == {"interleaved", "speech", "text"}
    assert [built([item], config)[0] for item in rows[:8]] == together[:8]
    assert built(rows[::-1], config) == together[::-1]
    # as the runner calls it on a block bigger than its slices, in either context
    placed = [item | {"recording": "manifest:r", "segment_index": n, "recording_start_ms": None, "speaker": None,
                      "duration_ms": 1200} for n, item in enumerate(rows)]
    for context in ("utterance", "recording"):
        config = interleave.InterleaveConfig(span_mean=2, context=context)
        whole = interleave.transform(tokenized_rows(placed), config)
        assert in_slices(functools.partial(interleave.transform, config=config), 7)(tokenized_rows(placed)).equals(whole)


def test_sentence_granularity_makes_whole_sentences_speech_or_text():
    text = "The river ran. past the mill!"
    config = interleave.InterleaveConfig(granularity="sentence", kinds={"interleaved": 1.0}, span_mean=1, speech_ratio=0.5)
    made = built([row(WORDS, UNITS, text=text, id=f"manifest:{n}") for n in range(30)], config)
    layouts = {tuple(s.get("text") or tuple(s["units"]) for s in json.loads(r["json"])["segments"]) for r in made}
    assert layouts == {("The river ran.", (8, 9, 10)), ((5, 6, 7), "past the mill!")}
    assert {r["speech_words"] for r in made} == {3}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8).filter(lambda word: word.strip() == word and word), min_size=1, max_size=6),
       st.sampled_from(["interleaved", "speech", "text"]))
def test_documents_are_what_the_compact_json_encoder_writes(words, kind):
    """Quotes, backslashes, control characters and any Unicode in transcripts and ids survive."""
    timed = [(word, 200 * index, 200 * index + 150) for index, word in enumerate(words)]
    units = [(index, 200 * index, 200 * (index + 1)) for index in range(len(words))]
    [made] = built([row(timed, units, text=" ".join(words) + ' "end"\\', id='m:"\é\n')],
                   interleave.InterleaveConfig(kinds={kind: 1.0}, span_mean=1))
    assert made["json"] == render.COMPACT_JSON.encode(json.loads(made["json"]))
    sample.validate(json.loads(made["json"]))


_SEGMENT = st.one_of(st.tuples(st.just("text"), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 30)),
                                                          min_size=1, max_size=3)),
                     st.tuples(st.just("speech"), st.lists(st.integers(-2**40, 2**40), max_size=4)))


@settings(deadline=None)
@example(["\u3000日本\xa0", "b\u2028\x1c", "\u0085 c\x1f ", "\u180e d\u200b"],  # spaces, and the two that are not
         [([("text", [(0, 0, 4), (1, 0, 3)]), ("text", [(2, 0, 9), (3, 0, 9)])], ["id"], "text", "ja", "")])
@given(st.lists(st.text(max_size=12), min_size=4, max_size=4),
       st.lists(st.tuples(st.lists(_SEGMENT, min_size=1, max_size=4), st.lists(st.text(), min_size=1, max_size=3),
                          st.sampled_from(sample.KINDS), st.text(max_size=3), st.sampled_from(["", " ", '"\n'])), max_size=5))
def test_the_document_writer_writes_what_the_json_encoder_writes(transcripts, documents):
    """Any string (control characters, quotes, backslashes, whitespace, any Unicode) in transcripts,
    ids and languages; texts cut from transcripts by character (as Python slices and strips them)
    and joined; units of any sign and size, split over several ranges; documents of several ids."""
    assert_written_as_encoded(transcripts, documents)


def test_the_document_writer_grows_its_buffer_where_its_guess_falls_short():
    """Its buffer is sized for texts without escapes and units of up to 5 digits: documents of
    control characters (6 bytes each in JSON) and of 19-digit units, after ones that fit, make it
    grow several times and go on from the document that did not fit."""
    controls = "\x01\x02" * 600
    documents = [([("text", [(0, 0, 5)])], ["a"], "text", "en", ""),
                 ([("text", [(1, 0, 1200), (1, 0, 1200)]), ("speech", [2**62] * 40)], ["b", "c"], "interleaved", "en", "\n"),
                 ([("speech", [-(2**62)] * 300)], ["d"], "speech", "\x00" * 50, ""),
                 ([("text", [(2, 0, 3)])], ["\x1f" * 100], "text", "en", "")]
    assert_written_as_encoded(["short", controls, "end", ""], documents)


@pytest.mark.parametrize("values", [np.array([3, 2**31]), np.array([-(2**31) - 1, 0]), pa.array([2**31], pa.int64())])
def test_int_lists_refuse_values_past_int32(values):
    """Member rows keep counts, offsets and units as int32: a value that does not fit raises (the
    batch's rows are then built one by one, and the row that holds it rejected), never wraps."""
    with pytest.raises((OverflowError, pa.ArrowInvalid)):
        render.int_lists(values, np.array([len(values)]))


def test_int_lists_group_values_by_size():
    made = render.int_lists(np.array([1, -(2**31), 2**31 - 1], np.int64), np.array([2, 0, 1]))
    assert made.type == pa.list_(pa.int32()) and made.to_pylist() == [[1, -(2**31)], [], [2**31 - 1]]


def assert_written_as_encoded(transcripts, documents):
    segments = [(modality, content, joiner) for held, *_, joiner in documents for modality, content in held]
    spoken = [content for modality, content, _ in segments if modality == "speech"]
    flat_units = np.array([unit for units in spoken for unit in units], np.int64)
    halves = [(len(units) // 2, len(units) - len(units) // 2) for units in spoken]  # each segment's units as two ranges
    lengths = np.array([length for pair in halves for length in pair], np.int64)
    units = render.SpeechUnits(flat_units, np.cumsum(lengths) - lengths, lengths, np.full(len(spoken), 2))
    written = [(content, joiner) for modality, content, joiner in segments if modality == "text"]
    pieces = [piece for content, _ in written for piece in content]
    joiners = sorted({joiner for _, joiner in written})
    texts = render.TextPieces(pa.array(["ahead", *transcripts]).slice(1),
                              *(np.array([piece[side] for piece in pieces], np.int64) for side in range(3)),
                              np.array([len(content) for content, _ in written]),
                              np.array([joiners.index(joiner) for _, joiner in written], np.int64), joiners)
    made = render.documents_json(units, texts, np.array([modality == "speech" for modality, *_ in segments], bool),
                                 np.array([len(held) for held, *_ in documents]), [kind for _, _, kind, *_ in documents],
                                 pa.array([language for *_, language, _ in documents], pa.string()),
                                 pa.array([i for _, ids, *_ in documents for i in ids], pa.string()),
                                 np.array([len(ids) for _, ids, *_ in documents]))

    def segment(modality, content, joiner):
        if modality == "speech":
            return {"modality": "speech", "text": None, "units": content}
        return {"modality": "text", "text": joiner.join(transcripts[row][start:end].strip() for row, start, end in content),
                "units": None}

    expected = [render.COMPACT_JSON.encode({"segments": [segment(*part, joiner) for part in held], "kind": kind, "language": language,
                                            "source_id": ids[0], "source_ids": ids, "synthetic": None})
                for held, ids, kind, language, joiner in documents]
    assert made.to_pylist() == expected


@pytest.mark.parametrize(("words", "units", "reason"), [
    ([], UNITS, "no_words"), (WORDS, [], "no_units"), (WORDS, [(1, 5000, 6000)], "spans_disjoint")])
def test_unusable_rows_are_rejected(words, units, reason):
    [made] = built([row(words, units)], interleave.InterleaveConfig())
    assert made["reject_reason"] == reason and made["json"] is None


def test_the_batch_transform_rejects_per_row_and_passes_upstream_rejects_through():
    rows = [row(WORDS, UNITS, id="manifest:good"), row(WORDS, [], id="manifest:no_units"),
            row(WORDS, [(1, 5000, 6000)], id="manifest:disjoint"), row([], UNITS, id="manifest:no_words"),
            row(WORDS, UNITS, id="manifest:upstream") | {"words": None, "units": None},
            row(WORDS, UNITS, id="manifest:mismatched") | {"unit_end_ms": [110]}]
    for item in rows:
        item["partition_total"] = 5
    rows[-2] |= {"reject_stage": "align", "reject_reason": "align_failed", "reject_detail": "x"}
    out = built(rows, interleave.InterleaveConfig())
    assert [r["reject_reason"] for r in out] == [None, "no_units", "spans_disjoint", "no_words", "align_failed", "no_units"]
    assert [r["reject_stage"] for r in out] == [None, "interleave", "interleave", "interleave", "align", "interleave"]
    assert out[0] == built(rows[:1], interleave.InterleaveConfig())[0] | {"partition_total": 5}
    assert out[0]["tokenizer"] == "mfcc:0:k16:u16:abc" and out[0]["language"] == "en"
    assert all(r["json"] is None and r["kind"] is None and r["tokenizer"] is None and r["units"] is None for r in out[1:])
    assert [r["id"] for r in out] == [r["id"] for r in rows] and {r["partition_total"] for r in out} == {5}


@pytest.mark.usefixtures("ray_session")
def test_shards_are_byte_identical_for_the_same_input_and_hold_the_same_samples_however_it_is_partitioned(tmp_path):
    lines = MANIFEST.read_text().splitlines()
    split = tmp_path / "split"
    split.mkdir()
    for part in range(3):
        (split / f"part{part}.jsonl").write_text("\n".join(lines[part::3]) + "\n")
        (split / "audio").mkdir(exist_ok=True)
    for audio in (MANIFEST.parent / "audio").iterdir():
        (split / "audio" / audio.name).write_bytes(audio.read_bytes())

    def pipeline(out, inputs, codebook):
        cfg = config_module.load(None, ["align.backend='pocketsphinx'", "codebook.clusters=32", "codebook.encoder='mfcc'", "tokenize.encoder='mfcc'",
                                        f"tokenize.codebook='{codebook}'", "interleave.shard_bytes=20000"])
        cfg.stages["ingest"].source = "manifest"
        cfg.stages["ingest"].inputs = [str(p) for p in inputs]
        quiet = {"log": lambda line: None}
        runner.run(cfg, ["ingest", "align"], str(out), **quiet)
        if not (codebook / "manifest.json").exists():
            runner.run(cfg, ["codebook"], str(out), **quiet)
        return runner.run(cfg, ["tokenize", "interleave"], str(out), **quiet).record

    def samples(folder):
        shards = [str(folder / entry["name"]) for entry in json.loads((folder / "index.json").read_text())["shards"]]
        return sorted((item["__key__"], item["json"]) for item in wds.WebDataset(shards, shardshuffle=False))

    codebook = tmp_path / "one" / "codebook"
    one = pipeline(tmp_path / "one", [MANIFEST], codebook)
    pipeline(tmp_path / "again", [MANIFEST], codebook)
    three = pipeline(tmp_path / "three", sorted(split.glob("*.jsonl")), codebook)
    assert one["partitions"]["processed"] == 1 and three["partitions"]["processed"] == 3
    shards = sorted((tmp_path / "one" / "shards").glob("*.tar"))
    assert len(shards) > 1
    for shard in shards:
        assert shard.read_bytes() == (tmp_path / "again" / "shards" / shard.name).read_bytes()
    assert len(list((tmp_path / "three" / "shards").glob("*.tar"))) >= 3
    assert samples(tmp_path / "one" / "shards") == samples(tmp_path / "three" / "shards")
    index = json.loads((tmp_path / "one" / "shards" / "index.json").read_text())
    read = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
    assert len(read) == index["total_samples"] == one["this_run"][-1]["out"]
    for item in read:
        sample.validate(json.loads(item["json"]))
    assert all("speech_text_ratio" in shard["stats"] for shard in index["shards"])
    assert sum(index["stats"]["speech_share_histogram"].values()) == index["stats"]["interleaved_samples"]
    assert index["unit_vocab"] == 32 and index["tokenizer"].startswith("mfcc:0:k32:u32:")


def test_a_tokenizer_id_names_its_unit_vocabulary():
    assert tokenized.unit_vocabulary(tokenized.tokenizer_id("hf/C:/models/hubert", 9, 500, 100, "ab12")) == 100
    with pytest.raises(ValueError, match="not a tokenizer id"):
        tokenized.unit_vocabulary("mfcc:0:k32:abc")


def test_shards_refuse_samples_of_two_tokenizers(tmp_path):
    rows = [row(WORDS, UNITS, id=f"manifest:{n}") | {"tokenizer": f"mfcc:0:k16:u16:{n}"} for n in ("a", "b")]
    out = interleave.transform(tokenized_rows(rows), interleave.InterleaveConfig())
    commit_rows(tmp_path / "interleave", "p", stream.accepted(out, sample.ROW_SCHEMA))
    with pytest.raises(ValueError, match="2 tokenizers"):
        interleave.write_shards(interleave.InterleaveConfig(), tmp_path / "interleave", serial)


def test_speech_is_chosen_only_for_chunks_in_utterance_order():
    """Out of order, overlapping or out of range, chunks are refused before the compiled pass writes unchecked."""
    words, keys = np.array([2, 3, 1]), spans.stream_keys(0, ["a", "b"])
    with pytest.raises(ValueError, match="ascending"):
        spans.choose_speech(words, np.array([1, 0, 1]), keys, 0.3, 3.0)
    for firsts, ends in (([0, 1], [2, 3]), ([0, 2], [1, 4]), ([1, 0], [2, 1]), ([-1, 2], [1, 3])):
        with pytest.raises(ValueError, match="ranges"):
            spans.choose_speech_in(words, np.array(firsts), np.array(ends), keys, 0.3, 3.0)
    config = interleave.InterleaveConfig(context="recording")
    for owners in ([1, 0, 1], [0, 1, 2]):
        with pytest.raises(ValueError, match="ascending"):
            interleave.choose_document_speech(keys, words, np.array(owners), config)
    assert len(interleave.choose_document_speech(keys, words, np.array([0, 1, 1]), config)[1]) == 3


def test_sample_columns_take_the_contracts_list_field_name():
    """Arrow's type equality ignores a list's field name, so a list column named otherwise is
    still cast: a table built with the contract's schema would otherwise hold a mismatched column."""
    from sylm_data.documents.utterances import _typed

    made = _typed(pa.array([[1, 2]], pa.list_(pa.field("element", pa.int32()))), pa.list_(pa.int32()))
    assert made.type.value_field.name == "item" and made.to_pylist() == [[1, 2]]
