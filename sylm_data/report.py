"""`sylm-data report DIR`: one self-contained HTML page about an output folder.

The funnel per stage (the run records) with a few example ids per reject reason; histograms of
utterance duration, words/s, units/s and per-sample speech share; the language, source and kind
mix; and a viewer of a few utterances: the stored audio in a player, its waveform with word and
unit boundaries, and the interleaved document coloured by modality. The page loads nothing: SVG,
CSS and script are inline and the audio is a data: URI.

Rows are streamed in batches and only binned counts are held; audio is read and decoded for the
viewer's samples only, which come from the first committed partitions.
"""

import base64
import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from sylm_data import audio
from sylm_data.pipeline import partitions, registry
from sylm_data.pipeline.output import OutputLayout
from sylm_data.pipeline.shards import read_members
from sylm_data.schemas import aligned, reject, sample, tokenized, utterance
from sylm_data.documents import recordings
from sylm_data.stages import ingest, interleave

DEFAULT_SAMPLES = 3
MAX_SAMPLES = 8
MAX_AUDIO_BYTES = 2_000_000  # per sample; longer audio is drawn but not embedded
EXAMPLES_PER_REASON = 5
BATCH_ROWS = 8192
WAVE_COLUMNS = 800
MIX_TOP = 12
SHOWN_UNITS = 24  # per speech segment of a document
INTERLEAVED = "interleaved"

# what a browser needs to be told for each `audio.sniff_format` answer
MIME = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg",
        "opus": "audio/ogg; codecs=opus", "m4a": "audio/mp4", "webm": "audio/webm"}


class ReportError(ValueError):
    pass


# ---- binning --------------------------------------------------------------------------------

def bin_counts(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """Counts of the finite `values` in `bins` equal bins over [low, high); a value below `low`
    counts in the first bin, one at or above `high` in the last. Shape (bins,), int64."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    index = np.clip(np.floor((values - low) / (high - low) * bins), 0, bins - 1).astype(np.int64)
    return np.bincount(index, minlength=bins)


@dataclass
class Histogram:
    """A measure's counts in fixed bins, filled batch by batch."""

    title: str
    unit: str
    low: float
    high: float
    bins: int
    counts: np.ndarray = field(init=False)
    total: float = 0.0  # the sum of the values counted, for the mean

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.bins, dtype=np.int64)

    def add(self, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        self.counts += bin_counts(values, self.low, self.high, self.bins)
        self.total += float(values.sum())

    @property
    def n(self) -> int:
        return int(self.counts.sum())


def peaks(samples: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and the highest sample in each of `columns` equal slices of `samples` (fewer
    columns when there are fewer samples); two arrays of the same length."""
    columns = max(1, min(columns, len(samples)))
    starts = np.linspace(0, len(samples), columns + 1).astype(np.int64)[:-1]
    return np.minimum.reduceat(samples, starts), np.maximum.reduceat(samples, starts)


def latest_counts(runs: list[dict], order: list[str]) -> list[dict]:
    """Per stage, in `order`, the cumulative counts ({stage, in, out, rejected: {reason: n}}) of
    the latest of `runs` (oldest first) that ran it."""
    latest = {}
    for record in runs:
        for counts in record.get("cumulative", []):
            latest[counts["stage"]] = counts
    return [latest[stage] for stage in order if stage in latest]


# ---- rendering ------------------------------------------------------------------------------

def histogram_svg(histogram: Histogram) -> str:
    """Bars of the counts, the range below them (the last bin also holds what lies beyond)."""
    width, height, left, bottom = 480, 170, 36, 140
    step = (width - left - 4) / histogram.bins
    tallest = max(int(histogram.counts.max()), 1)
    size = (histogram.high - histogram.low) / histogram.bins
    bars = []
    for index, count in enumerate(histogram.counts.tolist()):
        if not count:
            continue
        start = histogram.low + index * size
        over = "+" if index == histogram.bins - 1 else ""
        bar = (bottom - 8) * count / tallest
        bars.append(f'<rect x="{left + index * step:.1f}" y="{bottom - bar:.1f}" width="{max(step - 1, 1):.1f}" '
                    f'height="{bar:.1f}"><title>{start:g}–{start + size:g}{over} '
                    f'{escape(histogram.unit)}: {count:,}</title></rect>')
    middle = (histogram.low + histogram.high) / 2
    labels = (f'<text x="{left}" y="{bottom + 14}">{histogram.low:g}</text>'
              f'<text x="{(left + width) / 2:.0f}" y="{bottom + 14}" text-anchor="middle">{middle:g}</text>'
              f'<text x="{width - 4}" y="{bottom + 14}" text-anchor="end">≥{histogram.high:g} {escape(histogram.unit)}</text>'
              f'<text x="{left - 4}" y="12" text-anchor="end">{tallest:,}</text>'
              f'<text x="{left - 4}" y="{bottom}" text-anchor="end">0</text>')
    mean = histogram.total / histogram.n if histogram.n else 0.0
    return (f'<figure class="histogram"><figcaption>{escape(histogram.title)} '
            f'<small>n={histogram.n:,}, mean {mean:.2f} {escape(histogram.unit)}</small></figcaption>'
            f'<svg viewBox="0 0 {width} {height}" role="img"><g class="bars">{"".join(bars)}</g>'
            f'<line x1="{left}" x2="{width - 4}" y1="{bottom}" y2="{bottom}" class="axis"/>{labels}</svg></figure>')


def mix_table(title: str, counts: Counter) -> str:
    """The `MIX_TOP` most common values with their share as a bar; the rest summed as `other`."""
    total = sum(counts.values())
    shown = counts.most_common(MIX_TOP)
    rest = total - sum(n for _, n in shown)
    if rest:
        shown.append(("other", rest))
    rows = "".join(
        f'<tr><td>{escape(str(value))}</td><td class="n">{n:,}</td>'
        f'<td class="bar"><span style="width:{100 * n / total:.1f}%"></span></td></tr>'
        for value, n in shown
    )
    return f'<table class="mix"><caption>{escape(title)}</caption>{rows}</table>'


def _reason_anchor(stage: str, reason: str) -> str:
    return f"rejects-{stage}-{reason}"


@dataclass
class Rejects:
    """One reason's rejects of one stage: how many, and the first few (id, detail)."""

    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)


def funnel_html(funnel: list[dict], rejects: dict[tuple[str, str], Rejects]) -> str:
    """The stages' counts in → out with the rejects by reason, each reason linked to its examples."""
    if not funnel:
        table = "<p>No run records in DIR/runs: the counts below come from the rejects alone.</p>"
    else:
        rows = []
        for counts in funnel:
            kept = 100 * counts["out"] / counts["in"] if counts["in"] else 100.0
            reasons = ", ".join(
                (f'<a href="#{_reason_anchor(counts["stage"], reason)}">{escape(reason)}</a>'
                 if (counts["stage"], reason) in rejects else escape(reason)) + f" {n:,}"
                for reason, n in sorted(counts["rejected"].items(), key=lambda item: -item[1])
            )
            rows.append(f'<tr><th>{escape(counts["stage"])}</th><td class="n">{counts["in"]:,}</td>'
                        f'<td class="n">{counts["out"]:,}</td><td class="bar"><span style="width:{kept:.1f}%"></span></td>'
                        f'<td>{reasons or "none"}</td></tr>')
        table = ('<table class="funnel"><tr><th>stage</th><th>in</th><th>out</th><th>kept</th><th>rejected</th></tr>'
                 + "".join(rows) + "</table>")
    examples = []
    for (stage, reason), found in rejects.items():
        items = "".join(f"<li><code>{escape(sample_id)}</code> {escape(detail or '')}</li>" for sample_id, detail in found.examples)
        examples.append(f'<div class="reason" id="{_reason_anchor(stage, reason)}"><h4>{escape(stage)} / {escape(reason)}: '
                        f'{found.count:,}</h4><ul>{items}</ul></div>')
    listed = f"<h3>Rejects by reason, first {EXAMPLES_PER_REASON} ids each</h3>" + "".join(examples) if examples else ""
    return f'<section id="funnel"><h2>Funnel</h2>{table}{listed}</section>'


@dataclass
class Sample:
    """One utterance for the viewer; times are ms from the start of its audio."""

    id: str
    duration_ms: int
    language: str
    source: str
    text: str
    words: list[dict]  # aligned.WORD structs; empty before align
    units: list[tuple[int, int, int]]  # (unit, start_ms, end_ms); empty before tokenize
    audio: bytes | None
    audio_format: str | None
    document: dict | None  # the sample contract's document; None before interleave


class Wave(NamedTuple):
    low: np.ndarray  # per column, in -1..1
    high: np.ndarray
    duration_ms: int


def waveform_svg(wave: Wave | None, duration_ms: int, words: list[dict], units: list[tuple[int, int, int]]) -> str:
    """The waveform (`wave`, scaled to its loudest sample) over shaded word spans with word labels
    where they fit, a lane of unit spans below it and a playhead the page's script moves."""
    width, middle, amplitude = 1000, 50, 46
    span = max((wave.duration_ms if wave else duration_ms), 1)

    def x(ms: int) -> float:
        return width * ms / span

    parts = []
    for index, word in enumerate(words):
        start, end = x(word[aligned.WORD_START_MS]), x(word[aligned.WORD_END_MS])
        tip = f"{word[aligned.WORD_TEXT]} {word[aligned.WORD_START_MS]}–{word[aligned.WORD_END_MS]} ms"
        parts.append(f'<rect class="word w{index % 2}" x="{start:.1f}" y="0" width="{max(end - start, 0.5):.1f}" height="100">'
                     f'<title>{escape(tip)}</title></rect><line class="boundary" x1="{start:.1f}" x2="{start:.1f}" y1="0" y2="100"/>')
        if end - start >= 6 * len(word[aligned.WORD_TEXT]):
            parts.append(f'<text class="label" x="{start + 1:.1f}" y="114">{escape(word[aligned.WORD_TEXT])}</text>')
    if wave is not None and len(wave.low):
        loudest = max(float(np.abs(wave.low).max()), float(np.abs(wave.high).max()), 1e-9)
        columns = np.linspace(0, width, len(wave.low))
        upper = " ".join(f"{c:.1f},{middle - amplitude * v / loudest:.1f}" for c, v in zip(columns, wave.high))
        lower = " ".join(f"{c:.1f},{middle - amplitude * v / loudest:.1f}" for c, v in zip(columns[::-1], wave.low[::-1]))
        parts.append(f'<polygon class="wave" points="{upper} {lower}"/>')
    height = 120
    if units:
        height = 140
        for index, (unit, start_ms, end_ms) in enumerate(units):
            start, end = x(start_ms), x(end_ms)
            parts.append(f'<rect class="unit u{index % 2}" x="{start:.1f}" y="122" width="{max(end - start, 0.5):.1f}" height="14">'
                         f'<title>unit {unit} {start_ms}–{end_ms} ms</title></rect>')
    parts.append(f'<line class="playhead" x1="0" x2="0" y1="0" y2="{height}"/>')
    return (f'<svg class="waveform" viewBox="0 0 {width} {height}" data-duration-ms="{span}" role="img">'
            f'{"".join(parts)}</svg>')


def document_html(document: dict) -> str:
    """A sample's segments in order, text and speech told apart by colour."""
    segments = []
    for segment in document.get(sample.SEGMENTS, []):
        if segment.get(sample.MODALITY) == sample.SPEECH:
            units = segment.get(sample.UNITS) or []
            shown = " ".join(map(str, units[:SHOWN_UNITS])) + (f" … +{len(units) - SHOWN_UNITS}" if len(units) > SHOWN_UNITS else "")
            segments.append(f'<span class="speech" title="{len(units)} units">⟨{shown}⟩</span>')
        else:
            segments.append(f'<span class="text">{escape(segment.get(sample.TEXT) or "")}</span>')
    held = document.get(sample.SOURCE_IDS) or []
    across = f' <small class="held">{len(held)} utterances of one recording</small>' if len(held) > 1 else ""
    return f'<p class="document"><b>{escape(str(document.get(sample.KIND)))}</b>{across} {" ".join(segments)}</p>'


def player_html(sample_audio: bytes | None, audio_format: str | None) -> str:
    if sample_audio is None:
        return '<p class="note">no audio: the ingest rows of this partition are not in DIR/ingest</p>'
    mime = MIME.get(audio_format or "")
    if mime is None:
        return f'<p class="note">no player: a browser has no type for audio format {escape(str(audio_format))}</p>'
    if len(sample_audio) > MAX_AUDIO_BYTES:
        return (f'<p class="note">audio not embedded: {len(sample_audio) / 1e6:.1f} MB is over the '
                f'{MAX_AUDIO_BYTES / 1e6:g} MB cap per sample</p>')
    encoded = base64.b64encode(sample_audio).decode("ascii")
    return (f'<audio controls preload="metadata"><source src="data:{mime.split(";")[0]};base64,{encoded}" '
            f'type="{escape(mime)}"></audio>')


def sample_html(item: Sample, wave: Wave | None) -> str:
    facts = [f"{item.duration_ms / 1000:.2f} s", item.language, item.source]
    facts += [f"{len(item.words)} words"] * bool(item.words) + [f"{len(item.units)} units"] * bool(item.units)
    heading = f"<h3><code>{escape(item.id)}</code> <small>{escape(' · '.join(facts))}</small></h3>"
    drawn = waveform_svg(wave, item.duration_ms, item.words, item.units) if wave is not None or item.words else ""
    if item.audio is not None and wave is None:
        drawn = '<p class="note">the audio does not decode</p>' + drawn
    document = document_html(item.document) if item.document else ""
    return (f'<div class="sample">{heading}{player_html(item.audio, item.audio_format)}{drawn}'
            f'<p class="transcript">{escape(item.text)}</p>{document}</div>')


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { border-bottom: 1px solid #ccc; } h4 { margin: .6em 0 .2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.bar { width: 200px; } td.bar span { display: block; height: 10px; background: #4a78b5; }
.mixes { display: flex; flex-wrap: wrap; gap: 2em; } caption { text-align: left; font-weight: bold; }
.histograms { display: flex; flex-wrap: wrap; gap: 1em; } figure.histogram { margin: 0; width: 480px; }
.histogram rect { fill: #4a78b5; } .histogram text, svg.waveform text { font-size: 11px; fill: #444; }
line.axis { stroke: #888; }
.sample { border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
.sample audio { width: 100%; } svg.waveform { width: 100%; display: block; background: #fcfcfc; cursor: pointer; }
rect.word.w0 { fill: #e6eef9; } rect.word.w1 { fill: #f4f7fc; } line.boundary { stroke: #9ab3d5; stroke-width: .6; }
polygon.wave { fill: #2f4f7a; } rect.unit.u0 { fill: #e08a2e; } rect.unit.u1 { fill: #f3c48f; }
line.playhead { stroke: #c0392b; stroke-width: 1.5; }
.document span { border-radius: 3px; padding: 1px 3px; } .document .text { background: #dbe8f7; }
.document .speech { background: #fbd9b0; font-family: monospace; font-size: 12px; }
.note { color: #8a5a00; } small { color: #666; font-weight: normal; }
"""

SCRIPT = """
document.querySelectorAll('.sample').forEach(function (sample) {
  var player = sample.querySelector('audio'), wave = sample.querySelector('svg.waveform');
  if (!player || !wave) return;
  var head = wave.querySelector('.playhead'), seconds = Number(wave.dataset.durationMs) / 1000;
  player.addEventListener('timeupdate', function () {
    var x = 1000 * player.currentTime / seconds;
    head.setAttribute('x1', x); head.setAttribute('x2', x);
  });
  wave.addEventListener('click', function (event) {
    var box = wave.getBoundingClientRect();
    player.currentTime = seconds * (event.clientX - box.left) / box.width;
  });
});
"""


def page(title: str, sections: list[str]) -> str:
    """The whole document; the empty icon keeps the browser from asking for /favicon.ico."""
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f'<title>{escape(title)}</title><style>{CSS}</style></head><body>'
            f'<h1>{escape(title)}</h1>{"".join(sections)}<script>{SCRIPT}</script></body></html>\n')


# ---- reading --------------------------------------------------------------------------------

def _stream(folder: Path, columns: list[str], where: pc.Expression | None = None):
    """Tables of at most BATCH_ROWS of the rows under `folder` (every Parquet file outside dot and
    underscore folders, as `read_rows` reads them) that `where` selects, with those of `columns`
    the rows have."""
    if not folder.is_dir():
        return
    dataset = ds.dataset(folder, format="parquet")
    present = [name for name in columns if name in dataset.schema.names]
    for batch in dataset.to_batches(columns=present, filter=where, batch_size=BATCH_ROWS):
        yield pa.Table.from_batches([batch])


def _lengths(table: pa.Table, column: str) -> np.ndarray:
    return pc.list_value_length(table[column]).to_numpy(zero_copy_only=False).astype(np.float64)


def _value_counts(column) -> Counter:
    return Counter({item["values"]: item["counts"] for item in pc.value_counts(column).to_pylist()})


def _utterance_stats(folder: Path) -> tuple[list[Histogram], dict[str, Counter]]:
    duration = Histogram("Utterance duration", "s", 0, 30, 60)
    words = Histogram("Words per second", "words/s", 0, 8, 32)
    units = Histogram("Units per second", "units/s", 0, 16, 32)
    mix = {utterance.LANGUAGE: Counter(), utterance.SOURCE: Counter()}
    for table in _stream(folder, [utterance.DURATION_MS, utterance.LANGUAGE, utterance.SOURCE, aligned.WORDS, tokenized.UNITS]):
        seconds = table[utterance.DURATION_MS].to_numpy(zero_copy_only=False) / 1000
        duration.add(seconds)
        with np.errstate(divide="ignore", invalid="ignore"):
            if aligned.WORDS in table.column_names:
                words.add(_lengths(table, aligned.WORDS) / seconds)
            if tokenized.UNITS in table.column_names:
                units.add(_lengths(table, tokenized.UNITS) / seconds)
        for name, counts in mix.items():
            counts.update(_value_counts(table[name]))
    return [histogram for histogram in (duration, words, units) if histogram.n], mix


def _interleave_stats(folder: Path) -> tuple[Histogram, Counter]:
    share = Histogram("Speech share of an interleaved sample's words", "share", 0, 1, 20)
    kinds = Counter()
    for table in _stream(folder, [sample.ROW_KIND, sample.ROW_WORDS, sample.ROW_SPEECH_WORDS]):
        kinds.update(_value_counts(table[sample.ROW_KIND]))
        mixed = table.filter(pc.equal(table[sample.ROW_KIND], INTERLEAVED))
        with np.errstate(divide="ignore", invalid="ignore"):
            share.add(mixed[sample.ROW_SPEECH_WORDS].to_numpy(zero_copy_only=False)
                      / mixed[sample.ROW_WORDS].to_numpy(zero_copy_only=False))
    return share, kinds


def _rejects(layout: OutputLayout, stages: list[str]) -> dict[tuple[str, str], Rejects]:
    """Per (stage, reason), in pipeline order and then most common first, the rejects' count and first ids."""
    ordered = {}
    for stage in stages:
        found: dict[tuple[str, str], Rejects] = defaultdict(Rejects)
        for table in _stream(layout.rejects_dir(stage), [reject.ID, reject.STAGE, reject.REASON, reject.DETAIL]):
            for group in table.group_by([reject.STAGE, reject.REASON]).aggregate([(reject.ID, "count")]).to_pylist():
                key = (group[reject.STAGE], group[reject.REASON])
                found[key].count += group[f"{reject.ID}_count"]
                missing = EXAMPLES_PER_REASON - len(found[key].examples)
                if missing > 0:
                    of_reason = table.filter(pc.and_(pc.equal(table[reject.STAGE], key[0]), pc.equal(table[reject.REASON], key[1])))
                    found[key].examples += [(row[reject.ID], row[reject.DETAIL])
                                            for row in of_reason.slice(0, missing).to_pylist()]
        ordered.update(sorted(found.items(), key=lambda item: -item[1].count))
    return ordered


def _partition_documents(layout: OutputLayout, partition: str):
    """(sample key, document) of a partition: from its interleave rows, else from its shards. In
    recording context its rows are members, and its documents are those that start with one of
    them (keyed by that first utterance; they may go on in other partitions): their rows in
    DIR/documents name them, their bucket's shards hold them."""
    folder = layout.stage_dir(interleave.NAME) / partition
    if not folder.is_dir():
        yield from _shard_documents(layout.shards_dir, partition)
        return
    for table in _stream(folder, [sample.ROW_KEY, sample.ROW_KIND, sample.ROW_JSON]):
        is_member = pc.equal(table[sample.ROW_KIND], sample.MEMBER)
        for row in table.filter(pc.invert(is_member)).to_pylist():
            yield row[sample.ROW_KEY], json.loads(row[sample.ROW_JSON])
        members = table.filter(is_member)[sample.ROW_KEY].combine_chunks()
        buckets = {name: marker for name, marker in layout.markers(recordings.DOCUMENTS).items() if marker["rows_out"]}
        for bucket in sorted(buckets) if len(members) else ():  # an empty bucket has no rows file
            firsts = {key for rows in _stream(layout.root / recordings.DOCUMENTS / bucket, [sample.ROW_KEY],
                                              pc.field(sample.ROW_KEY).isin(members)) for key in rows[sample.ROW_KEY].to_pylist()}
            if firsts:
                yield from _shard_documents(layout.shards_dir, bucket, firsts)


def _shard_documents(shards: Path, prefix: str, keys: set[str] | None = None):
    """(sample key, document) of the shards of one partition (or documents bucket), in order; only
    those of `keys` where given (the shards read until all are found)."""
    wanted = None if keys is None else set(keys)
    for key, extension, data in read_members(shards, f"{prefix}-", keys):
        if extension == "json":
            yield key, json.loads(data)
            if wanted is not None:
                wanted.discard(key)
                if not wanted:
                    return


def _documents(layout: OutputLayout, partition: str, count: int) -> dict[str, dict]:
    """Up to `count` documents of a partition by sample key, interleaved ones first."""
    first, others = {}, {}
    for key, document in _partition_documents(layout, partition):
        chosen = first if document.get(sample.KIND) == INTERLEAVED else others
        if len(chosen) < count:
            chosen[key] = document
        if len(first) == count:
            break
    return dict(list((first | others).items())[:count])


def _samples(layout: OutputLayout, stage: str, count: int) -> list[Sample]:
    """Up to `count` utterances of `stage`'s first committed partitions, with their audio from the
    ingest rows of the same partition and their documents."""
    chosen: list[Sample] = []
    for partition in partitions.stage_partitions(layout.stage_dir(stage)):
        wanted = count - len(chosen)
        if wanted <= 0:
            break
        documents = _documents(layout, partition.id, wanted)
        listed = (sample_id for table in _stream(Path(partition.path), [utterance.ID]) for sample_id in table[utterance.ID].to_pylist())
        ids = list(documents) or list(itertools.islice(listed, wanted))
        in_ids = pc.field(utterance.ID).isin(ids)
        dataset = ds.dataset(partition.path, format="parquet")
        columns = [name for name in dataset.schema.names if name != utterance.AUDIO]
        rows = {row[utterance.ID]: row for row in dataset.to_table(columns=columns, filter=in_ids).to_pylist()}
        stored = {}
        audio_folder = layout.stage_dir(ingest.NAME) / partition.id
        if audio_folder.is_dir():
            found = ds.dataset(audio_folder, format="parquet").to_table(
                columns=[utterance.ID, utterance.AUDIO, utterance.AUDIO_FORMAT], filter=in_ids)
            stored = {row[utterance.ID]: row for row in found.to_pylist()}
        for sample_id in ids:
            if sample_id not in rows:
                continue
            row, kept = rows[sample_id], stored.get(sample_id, {})
            units = list(zip(row.get(tokenized.UNITS) or [], row.get(tokenized.UNIT_START_MS) or [], row.get(tokenized.UNIT_END_MS) or []))
            chosen.append(Sample(sample_id, row[utterance.DURATION_MS], row[utterance.LANGUAGE], row[utterance.SOURCE],
                                 row[utterance.TEXT], row.get(aligned.WORDS) or [], units, kept.get(utterance.AUDIO),
                                 kept.get(utterance.AUDIO_FORMAT), documents.get(sample_id)))
    return chosen[:count]


def _wave(stored: bytes | None) -> Wave | None:
    if stored is None:
        return None
    try:
        decoded = audio.decode(stored)
    except audio.AudioDecodeError:
        return None
    low, high = peaks(decoded.samples, WAVE_COLUMNS)
    return Wave(low, high, decoded.duration_ms)


def _shards_html(layout: OutputLayout) -> str:
    index_path = layout.shards_dir / "index.json"
    if not index_path.exists():
        return ""
    index = json.loads(index_path.read_text())
    facts = [("samples", f"{index.get('total_samples', 0):,}"), ("shards", f"{len(index.get('shards', [])):,}"),
             ("size", f"{index.get('total_bytes', 0) / 1e6:.2f} MB"), ("tokenizer", index.get(sample.INDEX_TOKENIZER)),
             ("unit vocabulary", index.get(sample.INDEX_UNIT_VOCAB))]
    facts += sorted(index.get("stats", {}).items())
    rows = "".join(f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>" for name, value in facts if value is not None)
    return f'<section id="shards"><h2>Shards</h2><table>{rows}</table></section>'


def build(folder: Path, samples: int = DEFAULT_SAMPLES) -> str:
    """The report on the output folder `folder` as one HTML document (`samples` utterances in the viewer)."""
    folder = Path(folder)
    if not 0 <= samples <= MAX_SAMPLES:
        raise ReportError(f"--samples must be within 0..{MAX_SAMPLES}, got {samples}")
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder")
    layout = OutputLayout(folder)
    order = list(registry.STAGES)
    written = [stage for stage in order if layout.markers(stage)]
    runs = [json.loads(path.read_text()) for path in sorted(layout.runs_dir.glob("*.json"))]
    if not written and not runs:
        raise ReportError(f"{folder} holds no committed stage output and no run records: is it an output DIR of `sylm-data run`?")
    sections = [funnel_html(latest_counts(runs, order), _rejects(layout, order))]
    with_durations = [stage for stage in written  # utterance rows: sample rows of recording documents have durations too
                      if {utterance.DURATION_MS, utterance.TEXT} <= set(registry.STAGES[stage].contract.names)]
    histograms, mixes = [], []
    if with_durations:
        found, mix = _utterance_stats(layout.stage_dir(with_durations[-1]))
        histograms += found
        mixes += [mix_table(f"{name} ({with_durations[-1]} rows)", counts) for name, counts in mix.items() if counts]
    if interleave.NAME in written:
        documents = layout.markers(recordings.DOCUMENTS)  # recording context: the samples are the documents
        sample_stage = recordings.DOCUMENTS if documents else interleave.NAME
        share, kinds = _interleave_stats(layout.stage_dir(sample_stage))
        histograms += [share] if share.n else []
        mixes.append(mix_table(f"kind ({sample_stage} rows)", kinds))
    if histograms:
        source = f"rows of DIR/{with_durations[-1]}" if with_durations else ""
        sections.append(f'<section id="histograms"><h2>Distributions <small>{escape(source)}</small></h2>'
                        f'<div class="histograms">{"".join(histogram_svg(h) for h in histograms)}</div></section>')
    if mixes:
        sections.append(f'<section id="mix"><h2>Mix</h2><div class="mixes">{"".join(mixes)}</div></section>')
    sections.append(_shards_html(layout))
    if with_durations and samples:
        shown = _samples(layout, with_durations[-1], samples)
        viewer = "".join(sample_html(item, _wave(item.audio)) for item in shown)
        sections.append(f'<section id="viewer"><h2>Samples <small>from DIR/{escape(with_durations[-1])}, '
                        f'audio from DIR/ingest</small></h2>{viewer}</section>')
    return page(f"sylm-data report: {folder.resolve()}", sections)


def write(folder: Path, output: Path | None = None, samples: int = DEFAULT_SAMPLES) -> Path:
    """Write the report on `folder` to `output` (default: FOLDER/report.html); returns its path."""
    html = build(folder, samples)
    output = Path(output) if output else Path(folder) / "report.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return output
