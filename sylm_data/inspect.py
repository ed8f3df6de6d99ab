"""`sylm-data inspect`: one screen about a stage output, a rejects folder, shards or a whole DIR."""

import json
import statistics
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.pipeline import records
from sylm_data.pipeline.output import read_rows
from sylm_data.schemas import aligned, reject, tokenized, utterance


class InspectError(ValueError):
    pass


def summarize(path: Path, samples: int = 3) -> str:
    path = Path(path)
    if not path.exists():
        raise InspectError(f"{path} does not exist")
    if (path / "index.json").exists() or any(path.glob("*.tar")):
        return _shards(path, samples)
    if (path / "runs").is_dir():
        return _output_dir(path, samples)
    if not any(path.rglob("*.parquet")):
        raise InspectError(f"{path} holds no Parquet files, shards or run records")
    table = read_rows(path)
    if set(reject.SCHEMA.names) <= set(table.column_names) and utterance.AUDIO not in table.column_names:
        return _rejects(path, table, samples)
    return _rows(path, table, samples)


def _output_dir(path: Path, samples: int) -> str:
    lines = [f"{path}: run output"]
    record = records.latest(path / "runs")
    if record:
        lines.append(f"last run {record['run_id']}: stages {'+'.join(record['stages'])}, {record['wall_s']:.1f} s")
        for counts in record["cumulative"]:
            lines.append(f"  {counts['stage']}: {counts['in']:,} in, {counts['out']:,} out, rejected {counts['rejected'] or 'none'}")
    for child in sorted(p for p in path.iterdir() if p.is_dir() and p.name not in ("runs", "rejects")):
        if any(child.rglob("*.parquet")) or child.name == "shards":
            lines += ["", summarize(child, samples)]
    rejects_dir = path / "rejects"
    if rejects_dir.is_dir() and any(rejects_dir.rglob("*.parquet")):
        lines += ["", summarize(rejects_dir, samples)]
    return "\n".join(lines)


def _rows(path: Path, table, samples: int) -> str:
    lines = [f"{path}: {table.num_rows:,} rows"]
    has_durations = utterance.DURATION_MS in table.column_names
    # rows without audio (text-only samples) have no duration
    durations = [d / 1000 for d in table[utterance.DURATION_MS].drop_null().to_pylist()] if has_durations else []
    if durations:
        lines.append(
            f"  audio: {sum(durations) / 3600:.3f} h; per row min {min(durations):.2f} s, "
            f"median {statistics.median(durations):.2f} s, max {max(durations):.2f} s"
        )
    for column in (utterance.LANGUAGE, utterance.SOURCE, utterance.AUDIO_FORMAT, utterance.SAMPLE_RATE):
        if column in table.column_names:
            counts = Counter(table[column].to_pylist()).most_common(8)
            lines.append(f"  {column}: " + ", ".join(f"{value} {n:,}" for value, n in counts))
    if _is_list(table, aligned.WORDS) and table.num_rows:
        words = sum(len(w) for w in table[aligned.WORDS].to_pylist())
        seconds = sum(table[utterance.DURATION_MS].to_pylist()) / 1000
        lines.append(f"  words: {words:,} ({words / seconds:.1f} per second); aligner {table[aligned.ALIGNER][0]}")
    if _is_list(table, tokenized.UNITS) and table.num_rows:
        count = sum(len(u) for u in table[tokenized.UNITS].to_pylist())
        seconds = sum(table[utterance.DURATION_MS].to_pylist()) / 1000
        lines.append(f"  units: {count:,} ({count / seconds:.1f} per second); tokenizer {table[tokenized.TOKENIZER][0]}")
    if utterance.LABEL_SCORES in table.column_names and table.num_rows:
        column = table[utterance.LABEL_SCORES]
        transcript = [name for name in utterance.SCORES.names if name not in utterance.ALIGNMENT_SCORES]
        lines.append("  label scores (median / 90th percentile / max): " + _label_scores(column, transcript))
        if aligned.WORDS in table.column_names:
            lines.append("  alignment scores (median / 90th percentile / max): "
                         + _label_scores(column, utterance.ALIGNMENT_SCORES))
    shown = [name for name in table.column_names if name != utterance.AUDIO]
    for row in table.select(shown).slice(0, samples).to_pylist():
        if utterance.TEXT not in row:
            lines.append(f"  · {row[utterance.ID]}  " + ", ".join(f"{k} {v}" for k, v in row.items() if isinstance(v, int)))
            continue
        lines.append(f"  · {row[utterance.ID]}  {row[utterance.DURATION_MS] / 1000:.2f} s  {row[utterance.TEXT]!r}")
        if isinstance(row.get(tokenized.UNITS), list):
            lines.append(f"      units {' '.join(map(str, row[tokenized.UNITS][:16]))}{' …' if len(row[tokenized.UNITS]) > 16 else ''}")
        if isinstance(row.get(aligned.WORDS), list) and row[aligned.WORDS]:
            timed = " ".join(f"{w['text']}@{w['start_ms'] / 1000:.2f}" for w in row[aligned.WORDS][:8])
            lines.append(f"      {timed}{' …' if len(row[aligned.WORDS]) > 8 else ''}")
    return "\n".join(lines)


def _label_scores(column, names) -> str:
    """Each named label-quality score's median, 90th percentile and maximum over the rows that have it."""
    parts = []
    for name in names:
        if name not in column.type.names:  # rows written before the score existed
            continue
        values = np.array(pc.struct_field(column, name).drop_null(), np.float64)
        if values.size:
            median, high = np.quantile(values, [0.5, 0.9])
            parts.append(f"{name} {median:.2f}/{high:.2f}/{values.max():.2f}")
    return ", ".join(parts) or "none"


def _is_list(table, column: str) -> bool:
    return column in table.column_names and pa.types.is_list(table.schema.field(column).type)


def _rejects(path: Path, table, samples: int) -> str:
    lines = [f"{path}: {table.num_rows:,} rejects"]
    for (stage, reason), n in Counter(zip(table[reject.STAGE].to_pylist(), table[reject.REASON].to_pylist())).most_common():
        lines.append(f"  {stage}/{reason}: {n:,}")
    for row in table.slice(0, samples).to_pylist():
        lines.append(f"  · {row[reject.ID]}  {row[reject.REASON]}: {row[reject.DETAIL]}")
    return "\n".join(lines)


def _shards(path: Path, samples: int) -> str:
    index_path = path / "index.json"
    lines = [f"{path}: WebDataset shards"]
    if index_path.exists():
        index = json.loads(index_path.read_text())
        lines.append(f"  {index['total_samples']:,} samples in {len(index['shards'])} shards, {index['total_bytes'] / 1e6:.1f} MB")
        if "unit_vocab" in index:
            lines.append(f"  units: {index['unit_vocab']:,} ids of tokenizer {index['tokenizer']}")
        for name, value in sorted(index.get("stats", {}).items()):
            lines.append(f"  {name}: {value}")
    shard_paths = sorted(path.glob("*.tar"))
    if shard_paths:
        from sylm_data.schemas.sample import render as render_sample

        with tarfile.open(shard_paths[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.endswith(".json")][:samples]
            for member in members:
                lines.append(f"  · {member.name.rsplit('.', 1)[0]}  {render_sample(json.loads(archive.extractfile(member).read()))}")
    return "\n".join(lines)
