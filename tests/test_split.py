"""Word splitting as Qwen3-ForcedAligner's authors do it, checked against splits worked out by hand."""

import sys

import pytest

from sylm_data.align import split
from sylm_data.align.split import split_words, word_spans


@pytest.mark.parametrize("language, text, words", [
    # whitespace words keep letters, digits and the ASCII apostrophe only
    ("en", "Don't worry, it's 3.5 km — the U.S. team's e-mail!", ["Don't", "worry", "it's", "35", "km", "the", "US", "team's", "email"]),
    ("en", "don’t  stop\tbelieving\n", ["dont", "stop", "believing"]),
    ("fr", "L'homme « dit » aujourd’hui", ["L'homme", "dit", "aujourdhui"]),
    ("de", "Die Straße „Größe“", ["Die", "Straße", "Größe"]),
    ("ru", "Всё, ёж!", ["Всё", "ёж"]),
    # ideographs one by one, whatever stands around them; kana and Latin runs stay whole
    ("zh", "我在2024年用iPhone 15拍照。", ["我", "在", "2024", "年", "用", "iPhone", "15", "拍", "照"]),
    ("zh", "你好，world！", ["你", "好", "world"]),
    ("zh", "ひらがな漢字", ["ひらがな", "漢", "字"]),
    ("yue", "佢話：「好靚！」", ["佢", "話", "好", "靚"]),
    ("zh-CN", "中文", ["中", "文"]),
    # Korean: whole words, Hanja included (the reference's word list would give 학교 + 에)
    ("ko", "저는 학교에 갑니다. (정말!)", ["저는", "학교에", "갑니다", "정말"]),
    ("ko", "韓國語 공부", ["韓國語", "공부"]),
    ("en", " ... — !", []),
])
def test_words_are_split_as_the_aligner_times_them(language, text, words):
    assert split_words(text, language) == words


def pieces(text: str, language: str) -> list[str]:
    starts = [start for _, start, _ in word_spans(text, language)]
    return [text[start:end] for start, end in zip(starts, starts[1:] + [len(text)])]


def test_cuts_fall_after_whitespace_or_before_opening_marks_and_lose_nothing():
    assert pieces("He said (hello), ¿qué?", "es") == ["He ", "said ", "(hello), ", "¿qué?"]
    assert pieces("他说：“你好”", "zh") == ["他", "说：", "“你", "好”"]
    assert [text for text in pieces("我们去《红楼梦》展。", "zh")] == ["我", "们", "去", "《红", "楼", "梦》", "展。"]
    text = "Hello — world"
    assert [(word, text[start:end]) for word, start, end in word_spans(text, "en")] == [("Hello", "Hello"), ("world", "world")]


def test_japanese_words_are_nagisa_morphemes_found_where_the_text_writes_them():
    pytest.importorskip("nagisa")
    assert split_words("今日はいい天気ですね。", "ja") == ["今日", "は", "いい", "天気", "です", "ね"]
    # nagisa reads NFKC text: full-width letters come back as ASCII, placed on the characters they came from
    text = "ＡＩを使う"
    assert word_spans(text, "ja") == [("AI", 0, 2), ("を", 2, 3), ("使う", 3, 5)]


def test_a_missing_japanese_splitter_says_which_extra_to_install(monkeypatch):
    split._nagisa.cache_clear()
    monkeypatch.setitem(sys.modules, "nagisa", None)  # import nagisa now fails, installed or not
    try:
        with pytest.raises(split.MissingExtra) as missing:
            split_words("今日は", "ja")
        assert 'pip install "sylm-data[ja]"' in str(missing.value) and "\n" not in str(missing.value)
        assert split_words("今日は", "zh") == ["今", "日", "は"]  # other languages need nothing
    finally:
        split._nagisa.cache_clear()
