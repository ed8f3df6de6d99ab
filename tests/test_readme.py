"""The README runs as written: its bash blocks, line by line and in order, in one folder that holds
what the lines read (a few bundled sample utterances as Emilia tars and a YODAS2 archive, a small
text corpus, and the README's own `toml` files), stopping at the first line that fails.

The hub cannot be reached (HF_HUB_OFFLINE=1 and an empty hub cache), so a line that needs it says so
with `# readme: offline` and reads a cache holding tiny random models and a copy of the sample under
the names it uses; `# readme: skip REASON` leaves a line out. A marker on a line of its own applies
to the lines below it in its block. The README's Development section says the same to its readers."""

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sylm_data.cli import app
from sylm_data.sample import layouts
from tests.conftest import read_parquet
from tests.random_models import LM_TINY, save_random_lm

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"#\s*readme:\s*(\S*)\s*(.*)$")
MARKERS = ("offline", "skip")
CONFIG_NAME = re.compile(r"#\s*(\S+\.toml)\s*$")
COMMIT = "0" * 40  # the cached repos' one revision


@dataclass(frozen=True)
class Line:
    section: str
    command: str
    marker: str = ""  # "offline", "skip" or none
    reason: str = ""  # a skip's

    @property
    def words(self) -> str:
        """The command without its comments, as checks name it."""
        return " ".join(shlex.split(self.command, comments=True))


def parse(text: str) -> tuple[list[Line], dict[str, str]]:
    """The command lines of the ```bash blocks in order, each with its section heading and marker,
    and the ```toml blocks whose first line is `# NAME.toml`, by NAME."""
    lines, files = [], {}
    section, fence, block, block_marker = "", None, [], ("", "")
    for raw in text.splitlines():
        if fence is None:
            if raw.startswith("#"):
                section = raw.lstrip("#").strip()
            elif raw.startswith("```"):
                fence, block, block_marker = raw[3:].strip(), [], ("", "")
            continue
        if raw.startswith("```"):
            named = CONFIG_NAME.fullmatch(block[0]) if fence == "toml" and block else None
            if named:
                files[named.group(1)] = "\n".join(block) + "\n"
            fence = None
            continue
        block.append(raw)
        if fence != "bash" or not raw.strip():
            continue
        marked = MARKER.search(raw)
        if marked and marked.group(1) not in MARKERS:
            raise ValueError(f"{raw!r}: a marker is `# readme: offline` or `# readme: skip REASON`")
        if raw.lstrip().startswith("#"):
            if marked:
                block_marker = marked.groups()
            continue
        marker, reason = marked.groups() if marked else block_marker
        lines.append(Line(section, raw.strip(), marker, reason.strip()))
    return lines, files


def test_markers_and_config_files_are_read():
    text = """# Top
```bash
a --x 1   # a comment
b         # readme: skip no cluster here
```
## Sub
```bash
# readme: offline
c '#quoted'
d   # readme: skip needs 8 GPUs
```
```toml
# t.toml
[s]
```
"""
    lines, files = parse(text)
    assert lines == [Line("Top", "a --x 1   # a comment"),
                     Line("Top", "b         # readme: skip no cluster here", "skip", "no cluster here"),
                     Line("Sub", "c '#quoted'", "offline"),
                     Line("Sub", "d   # readme: skip needs 8 GPUs", "skip", "needs 8 GPUs")]
    assert files == {"t.toml": "# t.toml\n[s]\n"} and lines[0].words == "a --x 1"
    with pytest.raises(ValueError, match="a marker is"):
        parse("```bash\ne   # readme: ofline\n```\n")


def cache_repo(cache: Path, kind: str, repo_id: str, write: Callable[[Path], object]) -> None:
    """A repo in the hub cache's layout: {kind}--OWNER--NAME/{refs/main, snapshots/COMMIT/...}."""
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    write(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


def prepare(work: Path, hub_cache: Path, files: dict[str, str]) -> None:
    """What the README's lines read, small: corpus/ (Emilia tars), yodas2/, fineweb/, its toml
    files; and in the hub cache, the Emilia dataset and Qwen2.5-0.5B (tiny, random)."""
    utterances = layouts.sample_utterances()
    texts = [utterance.text for utterance in utterances]
    layouts.write_emilia(work / "corpus", utterances[:4], shard_size=2)
    layouts.write_yodas2(work / "yodas2", utterances[:2], per_recording=2)
    (work / "fineweb").mkdir()
    pq.write_table(pa.table({"text": [" ".join(texts[:4])]}), work / "fineweb" / "000_00000.parquet")
    for name, text in files.items():
        (work / name).write_text(text)
    cache_repo(hub_cache, "datasets", "amphion/Emilia-Dataset",
               lambda folder: layouts.write_emilia(folder / "Emilia" / "EN", utterances[:2], shard_size=2))
    cache_repo(hub_cache, "models", "Qwen/Qwen2.5-0.5B", lambda folder: save_random_lm(folder, LM_TINY, corpus=texts))


cli = CliRunner()


def check_quickstart(done: subprocess.CompletedProcess, work: Path) -> None:
    out = work / "out"
    assert "ingest: 24 in, 24 out; rejected: none" in done.stdout
    # quiet: Ray's, DeepSpeed's and the other libraries' lines go to the runs' logs, not to the terminal
    assert done.stderr == "", done.stderr[-2000:]
    noise = ("deprecated", "core_worker", "(raylet)", "Progress bars", "[WARNING]", "WARNING", "Traceback")
    assert not [line for line in done.stdout.splitlines() if any(word in line for word in noise)], done.stdout
    # the fused tokenize + interleave run kept tokenize's rows: the pairs stage can read them
    assert read_parquet(out / "tokenize").num_rows == 24 and len(list((out / "tokenize" / "_done").glob("*.json"))) == 3
    assert "kept: out/tokenize" in done.stdout
    aligned, rejected = read_parquet(out / "align"), read_parquet(out / "rejects" / "align")
    assert aligned.num_rows + rejected.num_rows == 24 and aligned.num_rows >= 22
    # the audio is stored once, in the ingest rows; align's rows join it by id
    assert read_parquet(out / "ingest").num_rows == 24 and "audio" not in aligned.column_names
    assert "inspect them: sylm-data inspect out/shards" in done.stdout
    shown = cli.invoke(app, ["inspect", str(out / "shards")])
    assert "24 samples" in shown.output and "<speech" in shown.output


def check_inspect(done: subprocess.CompletedProcess, work: Path) -> None:
    aligned = read_parquet(work / "out" / "align").num_rows
    assert f"{aligned} rows" in done.stdout and "language: en" in done.stdout
    assert "The@" in done.stdout  # words with their start times
    assert "units" in done.stdout and "speech_text_ratio" in done.stdout
    assert "The river ran past the old mill" in done.stdout


def check_eval_t2t(done, work):
    """One JSON line and nothing else: no weight-loading bar before it."""
    assert done.stderr == "", done.stderr[-2000:]
    assert {"unit_accuracy", "perplexity"} <= set(json.loads(done.stdout))


CHECKS = {"sylm-data quickstart --output out": check_quickstart, "sylm-data inspect out": check_inspect,
          "sylm-data eval t2t t2t/final --pairs out/pairs-heldout": check_eval_t2t}


@pytest.mark.slow
def test_the_readme_runs_as_written(tmp_path):
    lines, files = parse(README.read_text())
    assert lines and {"run.toml", "train.toml", "t2t.toml"} <= set(files)
    unexplained = [line.command for line in lines if line.marker == "skip" and not line.reason]
    assert not unexplained, f"a skipped line says why: {unexplained}"
    work, hub_cache, empty_cache = tmp_path / "work", tmp_path / "hub-cache", tmp_path / "empty-cache"
    work.mkdir()
    empty_cache.mkdir()
    prepare(work, hub_cache, files)
    environment = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                                "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    checked = set()
    for line in lines:
        if line.marker == "skip":
            continue
        cache = hub_cache if line.marker == "offline" else empty_cache
        done = subprocess.run(line.command, shell=True, executable="/bin/bash", cwd=work, capture_output=True, text=True,
                              timeout=600, env=environment | {"HF_HUB_CACHE": str(cache)})
        if done.returncode:
            tail = (done.stderr.strip() or done.stdout.strip())[-3000:]
            pytest.fail(f"README, {line.section}: `{line.command}` exited {done.returncode}:\n{tail}", pytrace=False)
        if line.words in CHECKS:
            CHECKS[line.words](done, work)
            checked.add(line.words)
    assert checked == set(CHECKS), f"the README no longer has {set(CHECKS) - checked}"
