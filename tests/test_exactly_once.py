"""Exactly once under real faults: real `sylm-data run` processes, real Ray, real SIGKILL.

Every scenario ends in the same comparison: the rows (accepted and rejected) of the faulted folder
equal a clean run's, each sample id comes out once, and the markers count every input sample.
A kill "mid-run" is placed by what the test sees in the output folder (a staged batch, a marker),
never by a sleep, so a slow machine only makes the tests slower.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from sylm_data.pipeline.shards import manifest_path
from sylm_data.sample import layouts
from tests.conftest import emilia_members, read_parquet, write_tar

pytestmark = pytest.mark.slow

PARTITIONS = 24
# DNSMOS in write_emilia is 3.20 + 0.01 * index: the first sample of every tar is a low_quality
# reject, so both rows and rejects are compared
SETTINGS = ("run.num_cpus=2", "ingest.min_quality=3.205")
POCKETSPHINX = ("align.backend='pocketsphinx'", "align.actors=1")
RUN_TIMEOUT_S = 300
POLL_S = 0.02


@dataclass
class Corpus:
    folder: Path
    samples: int
    partitions: int


@dataclass
class Pipeline:
    stages: tuple[str, ...]
    settings: tuple[str, ...]
    folders: tuple[str, ...]  # the output folders holding its rows and rejects

    @property
    def final(self) -> str:
        return self.stages[-1]


INGEST = Pipeline(("ingest",), SETTINGS, ("ingest", "rejects/ingest"))
# 48 in-flight rows (24 rejected by ingest) reach the aligner in two bundles: 32 rows, then the other 16
ALIGN = Pipeline(("ingest", "align"), SETTINGS + POCKETSPHINX, ("align", "rejects/ingest", "rejects/align"))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sylm_data.cli", *args]


def run_command(pipeline: Pipeline, inputs: str, out: Path, *settings: str) -> list[str]:
    stages = [arg for stage in pipeline.stages for arg in ("--stage", stage)]
    sets = [arg for setting in (*pipeline.settings, *settings) for arg in ("--set", setting)]
    return cli("run", *stages, "--source", "emilia", "--input", inputs, "--output", str(out), *sets)


def execute(command: list[str], cwd: Path | None = None, timeout_s: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run to the end; past `timeout_s` the run and the Ray it started are killed and TimeoutExpired raised."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def finish(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    done = execute(command, cwd)
    assert done.returncode == 0, f"{' '.join(command)}\nexit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


@contextmanager
def running(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """A run in its own session (driver and the Ray it starts), killed whole if the test leaves early."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(condition: Callable, process: subprocess.Popen, what: str, log: Path, timeout_s: float = 240):
    """Poll `condition` until it returns something true, while `process` runs; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(POLL_S)
    pytest.fail(f"no {what} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def kill_run(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    process.wait()


def markers(out: Path, stage: str) -> dict[str, dict]:
    folder = out / stage / "_done"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}


def run_ids(out: Path, stage: str) -> dict[str, str]:
    return {partition: marker["run_id"] for partition, marker in markers(out, stage).items()}


def staged_batches(out: Path) -> list[Path]:
    return [*out.glob("*/.tmp/*/*/*.parquet"), *out.glob("rejects/*/.tmp/*/*/*.parquet")]


def ray_processes(driver: int, title: str) -> list[psutil.Process]:
    """The driver's descendants whose process title starts with `title` (Ray sets `ray::<task>`
    while a worker runs a task, `ray::IDLE` between tasks)."""
    try:
        descendants = psutil.Process(driver).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for process in descendants:
        try:
            if " ".join(process.cmdline()).startswith(title):
                found.append(process)
        except psutil.Error:
            continue  # ended meanwhile
    return found


def kill_one(driver: int, title: str) -> int | None:
    """SIGKILL one of the driver's Ray processes titled `title...`; its pid, None if there was none."""
    for process in ray_processes(driver, title):
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
        return process.pid
    return None


def assert_same_rows(got: Path, expected: Path, pipeline: Pipeline) -> None:
    for folder in pipeline.folders:
        want, have = read_parquet(expected / folder), read_parquet(got / folder)
        assert have.num_rows == want.num_rows, folder
        if want.num_rows:
            want, have = want.sort_by("id"), have.sort_by("id")
            differing = {name: [key for key, a, b in zip(want["id"].to_pylist(), want[name].to_pylist(),
                                                       have[name].to_pylist()) if a != b]
                         for name in want.column_names if not have[name].equals(want[name])}
            assert not differing, f"{folder}: the columns that differ, with the ids where they do: {differing}"


def assert_exactly_once(out: Path, pipeline: Pipeline, corpus: Corpus) -> None:
    """Every input sample once: as a row or as one stage's reject, counted once by the markers."""
    ids = []
    for folder in pipeline.folders:
        table = read_parquet(out / folder)
        ids += table["id"].to_pylist() if table.num_rows else []
    assert len(ids) == len(set(ids)) == corpus.samples
    done = markers(out, pipeline.final)
    assert len(done) == corpus.partitions
    assert sum(marker["rows_in"] for marker in done.values()) == corpus.samples
    assert not (out / ".lock").exists()


def file_states(out: Path) -> dict[str, tuple[int, bytes]]:
    """Each output file but the run records: its mtime and bytes."""
    files = [p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "runs"]
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


# --- corpora and clean reference runs, shared by the module ---------------------------------


def emilia_corpus(tmp_path_factory, utterances, name: str, copies: int) -> Corpus:
    """PARTITIONS Emilia tars holding `copies` copies of the sample (`copies` utterances per tar)."""
    folder = tmp_path_factory.mktemp(name) / "corpus"
    paths = layouts.write_emilia(folder, utterances * copies, shard_size=copies)
    assert len(paths) == PARTITIONS
    return Corpus(folder, len(utterances) * copies, len(paths))


@pytest.fixture(scope="module")
def ingest_corpus(tmp_path_factory, utterances) -> Corpus:
    return emilia_corpus(tmp_path_factory, utterances, "ingest", 4)


@pytest.fixture(scope="module")
def align_corpus(tmp_path_factory, utterances) -> Corpus:
    return emilia_corpus(tmp_path_factory, utterances, "align", 2)


@pytest.fixture(scope="module")
def ingest_reference(ingest_corpus) -> Path:
    out = ingest_corpus.folder.parent / "reference"
    finish(run_command(INGEST, str(ingest_corpus.folder / "*.tar"), out))
    assert_exactly_once(out, INGEST, ingest_corpus)
    return out


@pytest.fixture(scope="module")
def align_reference(align_corpus) -> Path:
    out = align_corpus.folder.parent / "reference"
    finish(run_command(ALIGN, str(align_corpus.folder / "*.tar"), out))
    assert_exactly_once(out, ALIGN, align_corpus)
    assert align_corpus.samples > 32, "the aligner must get more than one batch"
    return out


# --- 1. a Ray worker killed mid-run ----------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, victim",
    [(INGEST, "ray::MapBatches("),  # a task reading, checking and writing a partition
     (ALIGN, "ray::MapWorker(")],  # the aligner actor, with the next batch in hand
    ids=["ingest-task", "align-actor"],
)
def test_a_killed_ray_worker_changes_no_row(tmp_path, request, pipeline, victim):
    corpus = request.getfixturevalue("ingest_corpus" if pipeline is INGEST else "align_corpus")
    reference = request.getfixturevalue("ingest_reference" if pipeline is INGEST else "align_reference")
    out, log = tmp_path / "out", tmp_path / "run.log"
    command = run_command(pipeline, str(corpus.folder / "*.tar"), out)
    with running(command, log) as process:
        wait_for(lambda: staged_batches(out), process, "a staged batch", log)
        killed = wait_for(lambda: kill_one(process.pid, victim), process, f"a {victim} process to kill", log)
        assert killed != process.pid
        assert len(markers(out, pipeline.final)) < corpus.partitions, "the kill must land mid-run"
        try:
            process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end after its worker was killed:\n{log.read_text()[-3000:]}")
    if process.returncode != 0:  # Ray gave up on the task: the same command finishes the job
        finish(command)
    assert_same_rows(out, reference, pipeline)
    assert_exactly_once(out, pipeline, corpus)


# --- 2. the same files reached three ways are the same partitions ----------------------------


def test_the_same_tars_by_another_path_a_relative_config_or_a_symlink_are_already_done(
        tmp_path, ingest_corpus, ingest_reference):
    out = tmp_path / "out"
    shutil.copytree(ingest_reference, out)  # what the run with the absolute glob wrote
    before = file_states(out)
    copy = tmp_path / "corpus"  # the same tars at another absolute path, named relative to the cwd
    shutil.copytree(ingest_corpus.folder, copy)
    (tmp_path / "cfg.toml").write_text(
        '[run]\nstages = ["ingest"]\nnum_cpus = 2\n'
        '[ingest]\nsource = "emilia"\ninputs = ["corpus/*.tar"]\nmin_quality = 3.205\n'
    )
    linked = tmp_path / "linked"
    linked.symlink_to(ingest_corpus.folder, target_is_directory=True)

    by_config = finish(cli("run", "--config", "cfg.toml", "--output", "out"), cwd=tmp_path)
    through_link = finish(run_command(INGEST, str(linked / "*.tar"), out))

    for done in (by_config, through_link):
        assert f"{PARTITIONS} partitions, {PARTITIONS} already done" in done.stdout
    assert file_states(out) == before  # no marker, row, reject or id list rewritten
    assert_same_rows(out, ingest_reference, INGEST)


# --- 3. one id in two tars ------------------------------------------------------------------


def test_an_id_in_two_tars_is_accepted_once_and_a_tar_added_later_cannot_take_it(tmp_path, utterances):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    shared, shared_id = "EN_B99999_S00000_W000000", "emilia:EN_B99999_S00000_W000000"
    write_tar(corpus / "B.tar", [*emilia_members(utterances[0], "EN_B00001_S00000_W000000"),
                                 *emilia_members(utterances[1], shared)])
    write_tar(corpus / "C.tar", [*emilia_members(utterances[2], shared),
                                 *emilia_members(utterances[3], "EN_B00002_S00000_W000000")])
    command = run_command(INGEST, str(corpus / "*.tar"), out)

    def check(samples: int) -> str:
        """The shared id: one row, from B (of the first two, the lowest partition id); every other occurrence a
        reject naming B."""
        rows, rejects = read_parquet(out / "ingest"), read_parquet(out / "rejects" / "ingest")
        done = markers(out, "ingest")
        first = next(partition for partition in done if partition.startswith("B-"))
        assert rows["id"].to_pylist().count(shared_id) == 1
        assert sorted(read_parquet(out / "ingest" / first)["id"].to_pylist()) == ["emilia:EN_B00001_S00000_W000000", shared_id]
        repeats = [row for row in rejects.to_pylist() if row["id"] == shared_id]
        assert len(repeats) == samples - 3
        for repeat in repeats:
            assert repeat["reason"] == "duplicate_id"
            assert repeat["detail"] == f"the id occurs in partition {first}"
        assert rejects.num_rows == len(repeats)
        ids = rows["id"].to_pylist()
        assert len(ids) == len(set(ids)) == 3
        assert sum(m["rows_in"] for m in done.values()) == rows.num_rows + rejects.num_rows == samples
        return first

    finish(command)
    first = check(samples=4)
    before = file_states(out)
    again = finish(command)
    assert "2 partitions, 2 already done" in again.stdout
    check(samples=4)
    assert file_states(out) == before

    # a tar added later whose name sorts first: the committed occurrence stays the first
    write_tar(corpus / "A.tar", emilia_members(utterances[4], shared))
    added = finish(command)
    assert "3 partitions, 2 already done" in added.stdout
    assert check(samples=5) == first
    later = next(p for p in markers(out, "ingest") if p.startswith("A-"))
    assert markers(out, "ingest")[later]["rejected"] == {"ingest/duplicate_id": 1}
    assert read_parquet(out / "ingest" / later).num_rows == 0


# --- 4. one run per folder --------------------------------------------------------------------


def test_a_second_run_on_a_live_folder_is_refused_and_a_dead_holder_is_taken_over(
        tmp_path, ingest_corpus, ingest_reference):
    out, log = tmp_path / "out", tmp_path / "first.log"
    command = run_command(INGEST, str(ingest_corpus.folder / "*.tar"), out)
    with running(command, log) as first:
        wait_for(lambda: markers(out, "ingest"), first, "a marker", log)
        os.killpg(first.pid, signal.SIGSTOP)  # alive, and goes no further: the second run surely meets it
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == first.pid
        done_before = run_ids(out, "ingest")
        assert 0 < len(done_before) < PARTITIONS, "the first run must be stopped mid-run"

        second = execute(command)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith("error: ") and f"is in use by run {holder['run_id']}" in lines[0]
        assert run_ids(out, "ingest") == done_before  # the refused run touched nothing

        kill_run(first)
    assert json.loads((out / ".lock").read_text()) == holder  # left behind by the killed holder

    third = finish(command)
    assert f"{PARTITIONS} partitions, {len(done_before)} already done" in third.stdout
    after = run_ids(out, "ingest")
    assert {p: after[p] for p in done_before} == done_before  # the dead run's commits stand
    taken_over = {after[p] for p in after if p not in done_before}
    assert len(taken_over) == 1 and holder["run_id"] not in taken_over
    assert_same_rows(out, ingest_reference, INGEST)
    assert_exactly_once(out, INGEST, ingest_corpus)


# --- 5. partitions commit as they finish ------------------------------------------------------


def first_commit_and_last_write(out: Path, pipeline: Pipeline) -> tuple[float, float]:
    committed = min(p.stat().st_mtime for p in (out / pipeline.final / "_done").glob("*.json"))
    written = max(p.stat().st_mtime for folder in pipeline.folders for p in (out / folder).glob("*/*.parquet"))
    return committed, written


def test_partitions_commit_as_they_finish(ingest_reference, align_reference):
    """The first partition is committed while later ones are still being computed, not in one burst at the end;
    with a model stage too: the partitions of the aligner's first bundle commit before its second is written."""
    for out, pipeline in ((ingest_reference, INGEST), (align_reference, ALIGN)):
        committed, written = first_commit_and_last_write(out, pipeline)
        times = sorted(p.stat().st_mtime for p in (out / pipeline.final / "_done").glob("*.json"))
        assert len(times) == PARTITIONS
        assert committed < written, (
            f"{pipeline.final}: the first of {PARTITIONS} markers was written {committed - written:.3f} s after the "
            f"last batch; markers within {times[-1] - times[0]:.3f} s"
        )


# --- 6. a killed run resumed with other speed settings ----------------------------------------


def test_a_killed_run_resumes_with_other_speed_settings(tmp_path, align_corpus, align_reference):
    """The driver and every Ray process killed mid-run (ingest and align fused), then resumed with more
    read workers and aligner actors and smaller batches."""
    pipeline, corpus, reference = ALIGN, align_corpus, align_reference
    # a CPU more than the two aligners take: with none spare the read tasks never start (see the test below)
    scaled = ("ingest.workers=2", "run.batch_rows=3", "align.actors=2", "align.batch_size=3", "run.num_cpus=3")
    out, log = tmp_path / "out", tmp_path / "killed.log"
    inputs = str(corpus.folder / "*.tar")
    with running(run_command(pipeline, inputs, out), log) as process:
        wait_for(lambda: markers(out, pipeline.final), process, "a marker", log)
        kill_run(process)
    done_before = run_ids(out, pipeline.final)
    assert 0 < len(done_before) < corpus.partitions, "the kill must land mid-run"

    resumed = finish(run_command(pipeline, inputs, out, *scaled))
    assert f"{corpus.partitions} partitions, {len(done_before)} already done" in resumed.stdout
    after = run_ids(out, pipeline.final)
    assert {p: after[p] for p in done_before} == done_before  # not recomputed
    assert_same_rows(out, reference, pipeline)
    assert_exactly_once(out, pipeline, corpus)


# --- 7. as many aligner actors as CPUs ----------------------------------------------------------


def test_as_many_aligner_actors_as_cpus_runs_or_is_refused_in_one_line(tmp_path, utterances):
    """Two aligner actors on two CPUs leave none for reading: the run must still end, with its rows or one
    error line, not wait forever."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    layouts.write_emilia(corpus, utterances[:4], shard_size=2)
    command = run_command(ALIGN, str(corpus / "*.tar"), out, "align.actors=2")
    try:
        done = execute(command, timeout_s=150)
    except subprocess.TimeoutExpired:
        pytest.fail("align.actors=2 with run.num_cpus=2: no partition read in 150 s (the actors hold every CPU)")
    if done.returncode == 0:
        assert len(markers(out, "align")) == 2
        assert read_parquet(out / "align").num_rows == 2
    else:
        assert done.returncode == 2, done.stderr[-3000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]


# --- 8. the recording finalize: a killed finalize task, then a killed driver -----------------


def recording_tokenize(folder: Path, partitions: int, rows: int) -> None:
    """Committed `tokenize` partitions whose utterances are segments of recordings spread over
    every partition (utterance k of recording k // 10 is segment k % 10, k = row x partitions + partition)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import synthetic_tokenized
    from sylm_data.schemas import utterance

    for number in range(partitions):
        partition = f"synthetic-{number:05d}"
        synthetic_tokenized.commit_partition(folder, partition, rows, number, "recordings", "test")
        path = folder / partition / "rows.parquet"
        table = pq.read_table(path)
        order = [row * partitions + number for row in range(rows)]
        table = table.set_column(table.schema.get_field_index(utterance.RECORDING), utterance.RECORDING,
                                 pa.array([f"synthetic:r{k // 10:04d}" for k in order], pa.string()))
        table = table.set_column(table.schema.get_field_index(utterance.SEGMENT_INDEX), utterance.SEGMENT_INDEX,
                                 pa.array([k % 10 for k in order], pa.int64()))
        pq.write_table(table, path)


def interleave_command(out: Path) -> list[str]:
    settings = ("run.num_cpus=2", "interleave.context='recording'", "interleave.members_per_bucket=100",
                "interleave.shard_bytes=20000")
    return cli("run", "--stage", "interleave", "--output", str(out), *(arg for s in settings for arg in ("--set", s)))


def test_a_finalize_task_and_then_the_driver_killed_while_assembling_documents_leave_the_same_shards(tmp_path):
    """Recording context: a Ray worker running a shuffle or assembly task is killed (Ray runs the task
    again), then the whole run once some buckets are committed; the rerun keeps those buckets and
    ends with the clean run's shards, byte for byte."""
    recording_tokenize(tmp_path / "tokenize", partitions=4, rows=500)
    clean, out, log = tmp_path / "clean", tmp_path / "out", tmp_path / "killed.log"
    for folder in (clean, out):
        folder.mkdir()
        shutil.copytree(tmp_path / "tokenize", folder / "tokenize")
    finish(interleave_command(clean))
    buckets = len(markers(clean, "documents"))
    assert buckets == 20

    with running(interleave_command(out), log) as process:
        wait_for(lambda: kill_one(process.pid, "ray::_apply"), process, "a finalize task to kill", log)
        wait_for(lambda: markers(out, "documents"), process, "a committed bucket", log)
        kill_run(process)
    kept = {name: (marker, (out / "documents" / "_done" / f"{name}.json").stat().st_mtime_ns)
            for name, marker in markers(out, "documents").items()}
    assert 0 < len(kept) < buckets, "the driver kill must land mid-assembly"
    assert not (out / "shards" / "index.json").exists()  # nothing published
    manifests = {name: manifest_path(out / "shards", name).stat().st_mtime_ns for name in kept}  # a bucket writes its shards first

    finish(interleave_command(out))
    again = markers(out, "documents")
    assert {name: (again[name], (out / "documents" / "_done" / f"{name}.json").stat().st_mtime_ns)
            for name in kept} == kept  # not assembled again
    assert {name: manifest_path(out / "shards", name).stat().st_mtime_ns for name in kept} == manifests  # nor its shards written
    tars = sorted(path.name for path in (clean / "shards").glob("*.tar"))
    assert tars and tars == sorted(path.name for path in (out / "shards").glob("*.tar"))
    assert all((clean / "shards" / name).read_bytes() == (out / "shards" / name).read_bytes() for name in tars)
    assert not (out / "documents" / "_shuffle").exists()
