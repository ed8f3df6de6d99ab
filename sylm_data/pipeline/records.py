"""Run records: DIR/runs/<run-id>.json — config, versions, counts per stage, wall time, throughput,
and the commit each hf:// input repo was read at."""

import importlib.metadata
import json
import platform
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("sylm-data", "ray", "pyarrow", "numpy", "soundfile", "torch", "webdataset"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def stage_counts(stages: list[str], rows_in: int, rejected: Counter) -> list[dict]:
    """Per stage: rows in, rows out, rejected by reason; a stage's input is the previous one's output."""
    counts = []
    for stage in stages:
        by_reason = {key.split("/", 1)[1]: n for key, n in sorted(rejected.items()) if key.split("/", 1)[0] == stage}
        rows_out = rows_in - sum(by_reason.values())
        counts.append({"stage": stage, "in": rows_in, "out": rows_out, "rejected": by_reason})
        rows_in = rows_out
    return counts


def hub_commits(paths: Iterable[str]) -> dict[str, list[str]]:
    """Per hub repo, the commits that hf:// partition paths (hf://OWNER/NAME@SHA/FILE) were read at;
    paths without one (written before revisions were resolved) and local paths are left out."""
    from sylm_data.sources import hub
    from sylm_data.sources.base import SourceError

    commits: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        if not path.startswith(hub.SCHEME):
            continue
        try:
            where = hub.parse(path)
        except SourceError:
            continue
        if where.revision:
            commits[where.repo_id].add(where.revision)
    return {repo: sorted(shas) for repo, shas in sorted(commits.items())}


def write(runs_dir: Path, record: dict) -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{record['run_id']}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True))
    return path


def latest(runs_dir: Path) -> dict | None:
    paths = sorted(runs_dir.glob("*.json"))
    return json.loads(paths[-1].read_text()) if paths else None
