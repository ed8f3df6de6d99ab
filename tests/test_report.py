"""`sylm-data report`: the pure parts (binning, peaks, the funnel), the page on output folders built
from the bundled sample, and the page in a real headless Chromium (Debian's chromium + chromedriver)."""

import io
import json
import os
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from sylm_data import report
from sylm_data.cli import app
from sylm_data.documents import recordings
from sylm_data.pipeline import records
from sylm_data.pipeline.output import read_rows
from sylm_data.pipeline.partitions import record_id
from sylm_data.schemas import aligned, reject, sample, stream, tokenized, utterance
from sylm_data.stages import interleave
from tests.conftest import commit_rows, serial, shard_samples
from tests.test_interleave import tokenized_rows

cli = CliRunner()
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PARTITIONS = ("EN-B000000-aaaaaaaa", "EN-B000001-bbbbbbbb")
REJECTS = {"ingest": {1: ("too_short", "0.4 s is under min_duration_ms"), 4: ("decode_error", "not audio")},
           "align": {2: ("align_failed", "no path through the transcript")}}
KINDS = ("interleaved", "text", "speech")
TOKENIZER = "mfcc:0:k64:u64:test"
CONTRACTS = {"ingest": utterance.SCHEMA, "align": aligned.SCHEMA, "tokenize": tokenized.SCHEMA, "interleave": sample.ROW_SCHEMA}


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32)), st.integers(1, 40))
def test_every_finite_value_lands_in_one_bin(values, bins):
    counts = report.bin_counts(np.array(values), -1.0, 3.0, bins)
    assert counts.shape == (bins,) and counts.sum() == np.isfinite(np.array(values, dtype=np.float64)).sum()


def test_values_beyond_the_range_count_in_the_edge_bins():
    assert report.bin_counts(np.array([-5, 0, 0.99, 1, 2.5, 3, 40, np.nan]), 0, 3, 3).tolist() == [3, 1, 3]


def test_peaks_keep_each_slice_extremes():
    samples = np.sin(np.linspace(0, 20, 10_001)).astype(np.float32)
    low, high = report.peaks(samples, 100)
    assert len(low) == len(high) == 100 and (low <= high).all()
    assert low.min() == samples.min() and high.max() == samples.max()
    assert len(report.peaks(samples[:7], 100)[0]) == 7


def test_the_funnel_takes_each_stage_from_the_latest_run_that_ran_it():
    first = {"cumulative": [{"stage": "ingest", "in": 4, "out": 3, "rejected": {"too_long": 1}},
                            {"stage": "align", "in": 3, "out": 3, "rejected": {}}]}
    resumed = {"cumulative": [{"stage": "align", "in": 5, "out": 4, "rejected": {"align_failed": 1}}]}
    funnel = report.latest_counts([first, resumed], ["ingest", "align", "tokenize"])
    assert [(c["stage"], c["in"], c["out"]) for c in funnel] == [("ingest", 4, 3), ("align", 5, 4)]


def _words(text: str, duration_ms: int) -> list[dict]:
    words = text.replace(",", "").replace(".", "").split()
    step = duration_ms // len(words)
    return [{"text": word, "start_ms": i * step, "end_ms": (i + 1) * step - 20} for i, word in enumerate(words)]


def _sample_row(kind: str, words: list[dict], units: list[int], sample_id: str) -> dict:
    half = len(words) // 2
    segments, speech_words = {
        "interleaved": ([sample.text_segment(" ".join(w["text"] for w in words[:half])), sample.speech_segment(units[len(units) // 2:])],
                        len(words) - half),
        "text": ([sample.text_segment(" ".join(w["text"] for w in words))], 0),
        "speech": ([sample.speech_segment(units)], len(words)),
    }[kind]
    document = {"segments": segments, "kind": kind, "language": "en", "source_id": sample_id, "synthetic": None}
    return {"id": sample_id, "source": "emilia", "kind": kind, "language": "en", "json": json.dumps(document),
            "words": len(words), "speech_words": speech_words, "units": len(units), "tokenizer": TOKENIZER}


def build_output(out: Path, utterances, stages: tuple[str, ...]) -> dict[str, list[str]]:
    """An output DIR as a run of `stages` leaves it, from 12 bundled utterances in two partitions:
    committed rows, rejects (REJECTS, by index in the partition) and a run record; returns the
    rejected ids by stage/reason."""
    rejected: dict[str, list[str]] = defaultdict(list)
    for number, partition in enumerate(PARTITIONS):
        rows = {stage: [] for stage in stages}
        rejects = {stage: [] for stage in stages}
        for index, spoken in enumerate(utterances[6 * number: 6 * number + 6]):
            sample_id = record_id("emilia", spoken.key)
            duration_ms = round(spoken.duration_s * 1000)
            words = _words(spoken.text, duration_ms)
            starts = list(range(0, duration_ms - 200, 200))
            units = [(7 * i + index) % 64 for i in range(len(starts))]
            ingested = {"id": sample_id, "source": "emilia", "audio": spoken.audio, "audio_format": "mp3", "sample_rate": 24000,
                        "duration_ms": duration_ms, "text": spoken.text, "language": "en", "speaker": spoken.speaker,
                        "quality": 3.3, "meta": None}
            with_words = {k: v for k, v in ingested.items() if k != "audio"} | {"words": words, "aligner": "test", "word_unit": "word"}
            made = {"ingest": ingested, "align": with_words,
                    "tokenize": with_words | {"units": units, "unit_start_ms": starts, "unit_end_ms": [s + 200 for s in starts],
                                              "tokenizer": TOKENIZER},
                    "interleave": _sample_row(KINDS[index % 3], words, units, sample_id)}
            for stage in stages:
                if index in REJECTS.get(stage, {}):
                    reason, detail = REJECTS[stage][index]
                    rejects[stage].append({"id": sample_id, "stage": stage, "reason": reason, "detail": detail, "source": "emilia"})
                    rejected[f"{stage}/{reason}"].append(sample_id)
                    break
                rows[stage].append(made[stage])
        for stage in stages:
            commit_rows(out / stage, partition, pa.Table.from_pylist(rows[stage], schema=CONTRACTS[stage]))
            if rejects[stage]:
                commit_rows(out / "rejects" / stage, partition, pa.Table.from_pylist(rejects[stage], schema=reject.SCHEMA))
    counts = Counter({key: len(ids) for key, ids in rejected.items()})
    records.write(out / "runs", {"run_id": "20260101-000000-test", "stages": list(stages),
                                 "cumulative": records.stage_counts(list(stages), 12, counts)})
    return rejected


@pytest.fixture(scope="module")
def full_output(tmp_path_factory, utterances):
    out = tmp_path_factory.mktemp("report") / "out"
    rejected = build_output(out, utterances, ("ingest", "align", "tokenize", "interleave"))
    result = cli.invoke(app, ["report", str(out), "--samples", "3"])
    assert result.exit_code == 0, result.output
    return out, rejected


def test_the_page_holds_the_funnel_histograms_mix_and_samples_and_loads_nothing(full_output):
    out, rejected = full_output
    html = (out / "report.html").read_text()
    assert not re.search(r"https?://", html)  # self-contained: nothing to fetch
    assert 'src="data:audio/mpeg;base64,' in html and html.count("<audio") == 3
    # the funnel: counts per stage, each reason linked to its example ids
    assert "<th>ingest</th><td class=\"n\">12</td><td class=\"n\">8</td>" in html
    assert set(rejected) == {"ingest/too_short", "ingest/decode_error", "align/align_failed"}
    for key, ids in rejected.items():
        stage, reason = key.split("/")
        assert f'href="#rejects-{stage}-{reason}"' in html and f'id="rejects-{stage}-{reason}"' in html
        assert all(f"<code>{sample_id}</code>" in html for sample_id in ids)
    for title in ("Utterance duration", "Words per second", "Units per second", "Speech share"):
        assert title in html
    assert "language (tokenize rows)" in html and "kind (interleave rows)" in html
    # the viewer: interleaved samples first, words and units drawn, the document by modality
    assert html.count('class="sample"') == 3 and html.count("<b>interleaved</b>") == 2
    assert 'class="unit u0"' in html and 'class="word w0"' in html and 'class="speech"' in html
    assert (out / "report.html").stat().st_size < 400_000


def test_a_folder_with_ingest_and_align_only_reports_too(tmp_path, utterances):
    build_output(tmp_path / "out", utterances, ("ingest", "align"))
    result = cli.invoke(app, ["report", str(tmp_path / "out"), "--output", str(tmp_path / "page.html"), "--samples", "2"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "page.html").read_text()
    assert "Words per second" in html and "Units per second" not in html and "Speech share" not in html
    assert html.count('class="sample"') == 2 and 'class="word w0"' in html and 'class="unit' not in html
    assert 'class="document"' not in html and "<th>align</th>" in html


def test_in_recording_context_the_viewer_shows_the_documents_that_start_with_its_utterances(tmp_path, utterances):
    """The interleave rows are members there: each shown utterance that opens a document comes with the
    whole document, which goes on over the next utterances of its recording, in both partitions."""
    out = tmp_path / "out"
    build_output(out, utterances, ("ingest", "align", "tokenize"))
    # buckets of 2 utterances: one recording fills one of them, and the others stay empty
    config = interleave.InterleaveConfig(context="recording", kinds={"interleaved": 1.0}, members_per_bucket=2)
    segment = 0
    for partition in PARTITIONS:
        table = pq.read_table(out / "tokenize" / partition).to_pylist()
        rows = [row | {"recording": "emilia:talk", "segment_index": segment + index, stream.PARTITION: partition,
                       stream.PARTITION_TOTAL: len(table), stream.REJECT_STAGE: None, stream.REJECT_REASON: None,
                       stream.REJECT_DETAIL: None} for index, row in enumerate(table)]
        members = stream.accepted(interleave.transform(tokenized_rows(rows), config), sample.ROW_SCHEMA)
        commit_rows(out / "interleave", partition, members)
        segment += len(table)
    interleave.write_shards(config, out / "interleave", serial)
    result = cli.invoke(app, ["report", str(out), "--samples", "8"])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    documents = read_rows(out / recordings.DOCUMENTS)
    firsts = set(documents[sample.ROW_KEY].to_pylist())
    assert html.count('class="document"') == len(firsts) < html.count('class="sample"')
    assert "kind (documents rows)" in html and "member" not in html
    longest = max(len(document[sample.SOURCE_IDS]) for _, document in shard_samples(out / "shards"))
    assert longest > 1 and f"{longest} utterances of one recording" in html


@pytest.mark.parametrize(("args", "message"), [(["--samples", "9"], "--samples must be within 0..8"),
                                               ([], "is not a folder")])
def test_user_errors_are_one_line(tmp_path, args, message):
    result = cli.invoke(app, ["report", str(tmp_path / "missing" if not args else tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_help_says_the_caps():
    shown = " ".join(cli.invoke(app, ["report", "--help"], terminal_width=200).output.split())
    assert f"at most {report.MAX_SAMPLES}" in shown and f"{report.MAX_AUDIO_BYTES / 1e6:g} MB" in shown


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through its own chromedriver (selenium-manager never runs)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"not installed: {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,3000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_renders_and_plays_in_chromium(full_output, browser):
    from PIL import Image, ImageStat
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out, _ = full_output
    browser.get((out / "report.html").resolve().as_uri())
    WebDriverWait(browser, 15).until(lambda driver: driver.execute_script(
        "return [...document.querySelectorAll('#viewer audio')].every(a => a.readyState >= 1)"))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    players = browser.execute_script(
        "return [...document.querySelectorAll('#viewer audio')].map(a => [a.querySelector('source').type,"
        " a.canPlayType(a.querySelector('source').type), a.readyState, Number.isFinite(a.duration) ? a.duration : -1])")
    assert len(players) == 3
    for mime, answer, ready, duration in players:
        assert mime == "audio/mpeg" and answer in ("maybe", "probably") and ready >= 1 and duration > 1
    shot = Image.open(io.BytesIO(browser.find_element(By.ID, "viewer").screenshot_as_png)).convert("L")
    assert shot.height > 300 and ImageStat.Stat(shot).var[0] > 200  # not blank: waveforms, lanes, text
