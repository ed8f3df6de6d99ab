"""The label-quality checks of sylm_data.quality: each on transcripts it must flag and ones it must
pass, in English and in languages of other scripts; MinHash near-duplicates by rate; the alignment
scores on word times that fit and ones that do not; `eval quality` on the labelled espeak-ng fixture."""

import ctypes.util
import json
import subprocess
import sys

import numpy as np
import pytest

from sylm_data.quality import alignment, evaluate, hallucination, inappropriate, language, minhash, restarts, words
from sylm_data.schemas import utterance
from sylm_data.schemas.reject import Reason
from sylm_data.stages.align import AlignConfig

STUCK = ("so we decided to go to the beach and then we went home and then we went home and then we "
         "went home and then we went home and then we went home and then we went home")
NATURAL = ("I said no, no, no, I won't go. Well, I know that that is true, but we need to go, we need to "
           "go now, so we went home.")


def test_a_stuck_transcript_loops_and_a_natural_repetition_does_not():
    assert hallucination.loop_share(STUCK, "en") > 0.7
    assert hallucination.loop_share(NATURAL, "en") == 0.0
    assert hallucination.loop_share("I'm sorry. I'm sorry. I'm sorry. I'm sorry.", "en") == 1.0
    assert hallucination.loop_share("no no no, not that", "en") == 0.0  # three single words: speech
    assert hallucination.loop_share("ha ha ha ha ha ha and then he left", "en") == pytest.approx(6 / 10)
    assert hallucination.loop_share("", "en") == 0.0


def test_loops_are_found_in_characters_of_chinese_and_morphemes_of_japanese():
    stuck = "今天我们去公园玩" + "请订阅我的频道" * 4  # a 7-character phrase, beyond 6 words
    assert hallucination.loop_share(stuck, "zh") == pytest.approx(28 / 36)
    assert hallucination.loop_share("我们今天去公园玩了很久，天天都想去。", "zh") == 0.0
    assert hallucination.loop_share("ありがとうございます" * 3, "ja") == 1.0
    assert hallucination.loop_share("今日はいい天気ですね", "ja") == 0.0


def test_a_loop_may_end_in_a_part_round():
    assert hallucination.loop_share("one two three one two three one two three one two", "en") == 1.0
    assert hallucination.loop_share("one two three one two three one two", "en") == 0.0  # under three rounds


def test_boilerplate_phrases_are_found_as_whole_words():
    assert hallucination.boilerplate_share("Thanks for watching!", "en") == 1.0
    assert hallucination.boilerplate_share("Subtitles by the Amara.org community", "en") == 1.0
    assert hallucination.boilerplate_share("so that was it, thanks for watching and bye", "en") == pytest.approx(3 / 9)
    assert hallucination.boilerplate_share("We were watching the thanks giving parade", "en") == 0.0
    assert hallucination.boilerplate_share("Untertitel im Auftrag des ZDF für funk, 2017", "de") == pytest.approx(7 / 8)
    assert hallucination.boilerplate_share("Субтитры сделал DimaTorzok", "ru") == 1.0
    assert hallucination.boilerplate_share("ご視聴ありがとうございました", "ja") == 1.0
    assert hallucination.boilerplate_share("请不吝点赞 订阅 转发 打赏支持明镜与点点栏目", "zh") == 1.0
    assert hallucination.boilerplate_share("我们谢谢观看的人", "zh") == pytest.approx(4 / 8)
    assert hallucination.boilerplate_share("今天天气很好", "zh") == 0.0
    assert hallucination.boilerplate_share("Thanks for watching", "sw") == 0.0  # no list for the language


def test_a_user_file_extends_the_lists(tmp_path):
    extra = tmp_path / "mine.tsv"
    extra.write_text("# mine\nen\tbrought to you by\n\nzh-CN\t本节目由\n", encoding="utf-8")
    assert hallucination.boilerplate_share("Brought to you by ACME", "en") == 0.0
    assert hallucination.boilerplate_share("Brought to you by ACME", "en", extra) == pytest.approx(4 / 5)
    assert hallucination.boilerplate_share("Thanks for watching", "en", extra) == 1.0  # the shipped list still counts
    assert hallucination.boilerplate_share("本节目由", "zh", str(extra)) == 1.0
    bad = tmp_path / "bad.tsv"
    bad.write_text("english thanks\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        hallucination.boilerplate_share("thanks", "en", bad)


SENTENCES = {
    "en": "okay let me show you how this works",
    "de": "okay ich zeige dir wie das funktioniert",
    "fr": "bon je vais te montrer comment ça marche",
    "ru": "ладно покажу как это работает",
    "zh": "好我给你看看这个怎么用",
    "ja": "じゃあ使い方を見せるね",
    "ko": "자 이거 어떻게 쓰는지 보여 줄게",
}


@pytest.mark.parametrize("declared", sorted(SENTENCES))
def test_language_id_agrees_with_a_right_label_and_not_a_wrong_one(declared):
    assert language.language_mismatch(SENTENCES[declared], declared) < 0.5
    for other, text in SENTENCES.items():
        if other != declared:
            assert language.language_mismatch(text, declared) > language.DEFAULT_MAX_MISMATCH, (other, declared)


def test_language_id_abstains_where_it_cannot_judge():
    assert language.language_mismatch("2024 12 31", "en") == 0.0  # no letters
    assert language.language_mismatch("okay let me show you how this works", "yi") == 0.0  # not in the model
    assert language.language_mismatch("我们今天去公园玩了很久", "yue") < 0.5  # Cantonese is often written so
    assert language.language_mismatch("okay let me show you how this works", "EN-us") < 0.5


def test_code_switching_counts_runs_of_another_language():
    assert language.code_switch_share("i went to the store yesterday y luego fuimos a la playa con mis amigos", "en") > 0.3
    assert language.code_switch_share("wir waren gestern im kino and the movie was really really boring", "de") > 0.3
    assert language.code_switch_share("我们昨天去看电影了 but the movie was really boring", "zh") == pytest.approx(6 / 15)
    assert language.code_switch_share("昨日映画を見に行ったけど but the movie was really boring", "ja") > 0.3
    monolingual = {
        "en": "i think we should go now because it is raining again and we are going to the park tomorrow",
        "es": "creo que deberíamos irnos ya porque está lloviendo otra vez y mañana vamos al parque",
        "ru": "я думаю нам пора идти потому что опять идёт дождь а завтра мы идём в парк",
        "zh": "我觉得我们现在该走了因为又下雨了明天我们去公园",
    }
    for code, text in monolingual.items():
        assert language.code_switch_share(text, code) == 0.0, code


def test_a_loanword_or_name_in_another_script_is_not_a_switch():
    assert language.code_switch_share("я купил новый iPhone вчера вечером", "ru") == 0.0
    assert language.code_switch_share("i met Владимир Путин yesterday at the office", "en") == 0.0  # two words
    assert language.code_switch_share("i read Война и мир last summer", "en") == pytest.approx(3 / 7)
    assert language.code_switch_share("", "en") == 0.0


def test_inappropriate_words_are_listed_words_and_the_words_they_begin():
    assert inappropriate.inappropriate_share("What the fuck is this", "en") == pytest.approx(1 / 5)
    assert inappropriate.inappropriate_share("That was FUCKING great", "en") == pytest.approx(1 / 4)
    assert inappropriate.inappropriate_share("Das ist mir scheißegal", "de") == pytest.approx(1 / 4)
    assert inappropriate.inappropriate_share("Das ist mir scheissegal", "de") == pytest.approx(1 / 4)
    assert inappropriate.inappropriate_share("блядь, опять дождь", "ru") == pytest.approx(1 / 3)
    assert inappropriate.inappropriate_share("他妈的真烦", "zh") == pytest.approx(3 / 5)
    assert inappropriate.inappropriate_share("씨발 진짜", "ko") == pytest.approx(1 / 2)
    for text, code in [("The shiitake mushrooms were great", "en"), ("Cocktail hour in Scunthorpe", "en"),
                       ("благодарю вас", "ru"), ("我妈的手机坏了", "zh"), ("시발점에서 출발했다", "ko"),
                       ("今日はいい天気ですね", "ja")]:
        assert inappropriate.inappropriate_share(text, code) == 0.0, text


def test_inappropriate_words_extend_by_a_user_file(tmp_path):
    extra = tmp_path / "words.tsv"
    extra.write_text("en\tfrak*\nja\tばかやろう\n", encoding="utf-8")
    assert inappropriate.inappropriate_share("frakking toasters", "en") == 0.0
    assert inappropriate.inappropriate_share("frakking toasters", "en", extra) == pytest.approx(1 / 2)
    assert inappropriate.inappropriate_share("このばかやろう", "ja", extra) > 0.0


def test_restarts_are_cut_off_words_and_words_said_again():
    assert restarts.restart_rate("I went- I go to the store", "en") == pytest.approx(1 / 7)
    assert restarts.restart_rate("we wa- we want to go", "en") == pytest.approx(1 / 6)  # one restart, two marks
    assert restarts.restart_rate("we wa we want to go", "en") == pytest.approx(1 / 6)
    assert restarts.restart_rate("the the cat sat", "en") == pytest.approx(1 / 4)
    assert restarts.restart_rate("I went to I went to the store", "en") == pytest.approx(1 / 8)
    assert restarts.restart_rate("I- I- I mean we- we should go", "en") > restarts.DEFAULT_MAX_RATE
    assert restarts.restart_rate("я пошёл- я иду в магазин", "ru") == pytest.approx(1 / 6)
    assert restarts.restart_rate("我们我们去公园吧", "zh") == pytest.approx(1 / 8)
    for text, code in [("He helped her with a well-known problem.", "en"), ("we need to go, we need to go now", "en"),
                       ("I went - you know - to the store", "en"), ("我们去看看吧", "zh"), ("高高兴兴地回家", "zh"),
                       ("他说——我不去", "zh"), ("", "en")]:
        assert restarts.restart_rate(text, code) == 0.0, text
    assert restarts.restart_rate("no no I do not", "en") <= restarts.DEFAULT_MAX_RATE  # natural, passes
    assert restarts.restart_rate("the the the cat", "en") == pytest.approx(2 / 4)
    for loop in ("thank you thank you thank you", "I don't know I don't know I don't know and then"):
        assert restarts.restart_rate(loop, "en") == 0.0, loop  # a loop: hallucination.loop_share judges it


def _texts(rng: np.random.Generator, count: int) -> list[list[str]]:
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocabulary = ["".join(rng.choice(letters, size=int(rng.integers(2, 9)))) for _ in range(3000)]
    return [[vocabulary[index] for index in rng.integers(0, len(vocabulary), size=int(rng.integers(10, 30)))]
            for _ in range(count)]


def test_near_duplicates_share_a_band_key_and_unrelated_texts_rarely_do():
    rng = np.random.default_rng(7)
    texts = _texts(rng, 600)
    near = unrelated = 0
    for first, second in zip(texts[:300], texts[300:]):
        changed = list(first)
        changed[int(rng.integers(len(changed)))] = "changed"
        keys = set(minhash.band_keys(minhash.signature(first)))
        near += bool(keys & set(minhash.band_keys(minhash.signature(changed))))
        unrelated += bool(keys & set(minhash.band_keys(minhash.signature(second))))
    assert near / 300 >= 0.97
    assert unrelated / 300 <= 0.01


def test_band_keys_cut_the_signature_and_name_their_band():
    signature = minhash.signature(["the", "quick", "brown", "fox", "jumps"])
    assert signature.dtype == np.uint32 and signature.shape == (minhash.PERMUTATIONS,)
    keys = minhash.band_keys(signature)
    assert len(keys) == minhash.BANDS and all(len(key) == 10 for key in keys)
    assert [key[:2] for key in keys] == [band.to_bytes(2, "big") for band in range(minhash.BANDS)]
    assert len(minhash.band_keys(signature, bands=16)) == 16
    with pytest.raises(ValueError, match="equal bands"):
        minhash.band_keys(signature, bands=5)
    with pytest.raises(ValueError, match="no MinHash signature"):
        minhash.signature([])
    assert minhash.similarity(minhash.signature(["hi"]), minhash.signature(["hi"])) == 1.0  # shorter than a shingle


def test_clusters_link_near_duplicates_and_keep_the_lowest_id():
    rng = np.random.default_rng(3)
    base, other, third = _texts(rng, 3)
    edited = list(base)
    edited[len(edited) // 2] = "changed"
    rows = [("u9", minhash.signature(edited)), ("u2", minhash.signature(base)), ("u5", minhash.signature(other)),
            ("u7", minhash.signature(base)), ("u1", minhash.signature(third))]
    assert minhash.clusters(rows) == [["u2", "u7", "u9"]]
    assert minhash.clusters(rows, min_similarity=1.0) == [["u2", "u7"]]
    assert minhash.clusters(rows[:1]) == []
    assert minhash.clusters(iter(rows[2:3] + rows[4:])) == []


def test_signatures_are_the_same_in_another_process():
    text = "the same words give the same signature everywhere"
    script = ("from sylm_data.quality import minhash, words; import sys; "
              f"sys.stdout.write(minhash.signature(words.words({text!r}, 'en')).tobytes().hex())")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert other == minhash.signature(words.words(text, "en")).tobytes().hex()


def test_scores_are_deterministic():
    cases = [(STUCK, "en"), (NATURAL, "en"), ("我们昨天去看电影了 but the movie was really boring", "zh"),
             ("ladno я пошёл- я иду", "ru")]
    checks = [hallucination.loop_share, hallucination.boilerplate_share, language.language_mismatch,
              language.code_switch_share, inappropriate.inappropriate_share, restarts.restart_rate]

    def scores():
        return [check(text, code) for text, code in cases for check in checks]

    first = scores()
    words.spans.cache_clear()
    assert scores() == first
    assert all(isinstance(score, float) and 0.0 <= score <= 1.0 for score in first)


# transcript against audio (quality.alignment): scores of an alignment's word times

SECOND = 16_000


def test_speaking_rate_is_a_multiple_of_the_language_typical_rate_over_the_voiced_span():
    words_ = ["abcdefghij", "klm"]  # 13 letters
    assert alignment.speaking_rate(words_, [(500, 800), (900, 1500)], "en") == pytest.approx(1.0)
    assert alignment.speaking_rate(words_, [(0, 100), (100, 200)], "en") == pytest.approx(5.0)  # squeezed: too fast
    assert alignment.speaking_rate(["好天气"], [(0, 3000)], "zh") == pytest.approx(0.2)
    assert alignment.speaking_rate(words_, [(0, 500), (600, 1000)], "sw") is None  # no typical rate
    assert alignment.speaking_rate(words_, [(700, 700), (700, 700)], "en") is None


def test_untranscribed_voice_is_speech_outside_the_words():
    rng = np.random.default_rng(0)
    speech = rng.normal(0, 0.1, SECOND).astype(np.float32)
    silence = np.zeros(SECOND // 2, np.float32)
    audio = np.concatenate([silence, speech, silence, speech])  # speech at 0.5-1.5 s and 2-3 s
    assert alignment.untranscribed_voice_share(audio, [(500, 1000), (1100, 3000)]) == 0.0
    assert alignment.untranscribed_voice_share(audio, [(500, 900), (1000, 1500)]) == pytest.approx(0.5, abs=0.02)
    assert alignment.untranscribed_voice_share(np.zeros(SECOND, np.float32), [(0, 500)]) == 0.0


def test_phone_rate_scores_find_squeezed_and_stretched_words():
    matched = [(0, 300), (300, 520), (600, 1000)]
    assert alignment.squeezed_word_share(matched, [4, 3, 5]) == 0.0
    assert alignment.squeezed_word_share([(0, 30), (30, 60), (60, 500)], [4, 3, 5]) == pytest.approx(2 / 3)
    assert alignment.slowest_ms_per_phone(matched, [4, 3, 5]) == pytest.approx(80)
    assert alignment.slowest_ms_per_phone([(0, 2000), (2000, 2100)], [2, 1]) == 1000


def test_binned_aligner_scores_find_doubt_piles_and_holes():
    assert alignment.timestamp_uncertainty([0.9, 0.7]) == pytest.approx(0.2)
    assert alignment.one_bin_word_share([(0, 80), (80, 400), (400, 400)], 80) == pytest.approx(2 / 3)
    assert alignment.piled_word_share([(0, 80), (80, 160), (160, 240)]) == 0.0
    assert alignment.piled_word_share([(0, 80), (800, 880), (800, 880), (800, 880), (900, 980)]) == pytest.approx(3 / 5)
    assert alignment.piled_word_share([(0, 80), (0, 160)]) == 0.0  # two words at one bin: a short word
    assert alignment.inner_silence_share([(0, 400), (400, 1000)]) == 0.0
    assert alignment.inner_silence_share([(0, 200), (800, 1000)]) == pytest.approx(0.6)
    assert alignment.inner_silence_share([(0, 600), (100, 500), (500, 1000)]) == 0.0  # overlaps count once


def test_alignment_scores_leave_what_a_backend_cannot_measure_null_and_bounds_name_a_reason():
    samples = np.random.default_rng(0).normal(0, 0.1, SECOND).astype(np.float32)
    timings = [(0, 400), (400, 1000)]
    words_ = ["hello", "everyone"]
    found = alignment.scores(words_, timings, "en", samples, phones=[4, 6])
    assert found[utterance.SPEAKING_RATE] == pytest.approx(1.0) and found[utterance.SLOWEST_MS_PER_PHONE] == 100
    assert found[utterance.TIMESTAMP_UNCERTAINTY] is None and found[utterance.ONE_BIN_WORD_SHARE] is None
    binned = alignment.scores(words_, timings, "en", samples, confidence=[0.5, 0.75], bin_ms=80)
    assert binned[utterance.TIMESTAMP_UNCERTAINTY] == pytest.approx(0.375) and binned[utterance.SQUEEZED_WORD_SHARE] is None
    assert set(found) == set(utterance.ALIGNMENT_SCORES)
    defaults = vars(AlignConfig())
    assert alignment.first_out_of_bounds(found, defaults) is None
    assert alignment.first_out_of_bounds(found | {utterance.SPEAKING_RATE: 0.2}, defaults)[0] == Reason.SPEAKING_RATE
    assert alignment.first_out_of_bounds(found | {utterance.SPEAKING_RATE: 2.5}, defaults)[0] == Reason.SPEAKING_RATE
    assert alignment.first_out_of_bounds(found | {utterance.SQUEEZED_WORD_SHARE: 0.5}, defaults)[0] == Reason.ALIGN_FAILED
    assert (alignment.first_out_of_bounds(found | {utterance.UNTRANSCRIBED_VOICE_SHARE: 0.5}, defaults)[0]
            == Reason.UNTRANSCRIBED_SPEECH)
    doubtful = binned | {utterance.TIMESTAMP_UNCERTAINTY: 0.9}
    assert alignment.first_out_of_bounds(doubtful, defaults) is None  # Qwen3's scores: kept, not bounded by default
    assert alignment.first_out_of_bounds(doubtful, defaults | {"max_timestamp_uncertainty": 0.5})[0] == Reason.LOW_ALIGNMENT_CONFIDENCE


@pytest.fixture(scope="module")
def labelled_fixture(tmp_path_factory):
    """Half the espeak-ng fixture: 12 sentences, 60 labelled utterances."""
    from sylm_data.sample.build import SENTENCES

    return evaluate.build_fixture(tmp_path_factory.mktemp("quality-fixture"), evaluate.fixture_items(SENTENCES[:12]))


@pytest.mark.skipif(ctypes.util.find_library("espeak-ng") is None, reason="needs Debian's espeak-ng (.ci/run installs it)")
def test_eval_quality_prints_precision_and_recall_of_each_check(labelled_fixture):
    from typer.testing import CliRunner

    from sylm_data.cli import app

    shown = CliRunner().invoke(app, ["eval", "quality", "--fixture", str(labelled_fixture)])
    assert shown.exit_code == 0, shown.output
    table = {line.split()[0]: line.split()[1:5] for line in shown.output.splitlines()[2:] if line.split()[0] in evaluate.CHECKS}
    assert set(table) == set(evaluate.CHECKS)
    for check in (evaluate.TRANSCRIPT_VS_AUDIO, evaluate.LOOP, evaluate.BOILERPLATE, evaluate.LANGUAGE):
        precision, recall = table[check][:2]
        assert float(precision) >= 0.9 and float(recall) >= 0.9, shown.output
    assert table[evaluate.TRANSCRIPT_VS_AUDIO][3] == "30"  # 12 swapped, 6 missing a sentence, 6 loops, 6 boilerplate
    assert "flagged as transcript_vs_audio by: align_failed" in shown.output


def test_eval_quality_refuses_an_unknown_label(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav", "text": "hi", "language": "en", "labels": ["typo"]}) + "\n")
    with pytest.raises(ValueError, match="unknown labels"):
        evaluate.evaluate(manifest)
