"""Row isolation: a batch that raises costs only the rows that raise on their own, in a transform and in a real run."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest
import torch

from sylm_data.pipeline import registry
from sylm_data.pipeline.stage import Rejected, in_slices, isolate
from sylm_data.sample import MANIFEST
from sylm_data.schemas import stream
from sylm_data.schemas.reject import Reason
from tests.conftest import read_parquet

CONTRACT = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False),
                      pa.field("doubled", pa.int64())])
OUTPUT = stream.in_flight(CONTRACT)


def batch_of(ids: str, rejected: str = "") -> pa.Table:
    """One in-flight row per letter, `number` its position; the rows in `rejected` as a reader rejects them."""
    rows = [{"id": key, "source": "toy", "number": number, stream.PARTITION: "p", stream.PARTITION_TOTAL: len(ids) * (key == ids[-1]),
             stream.REJECT_STAGE: "ingest" if key in rejected else None,
             stream.REJECT_REASON: Reason.TOO_SHORT.value if key in rejected else None,
             stream.REJECT_DETAIL: "12 ms < 300 ms" if key in rejected else None}
            for number, key in enumerate(ids)]
    schema = pa.schema([pa.field("id", pa.string()), pa.field("source", pa.string()), pa.field("number", pa.int64()),
                        *stream.ENVELOPE])
    return pa.Table.from_pylist(rows, schema=schema)


class Doubler:
    """A toy stage transform that remembers the ids of every batch it is called on and fails as `fail` says."""

    def __init__(self, fail) -> None:
        self.fail, self.calls = fail, []

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch["id"].to_pylist()
        self.calls.append(ids)
        self.fail(ids)
        rows = [{name: row[name] for name in ("id", "source", *stream.ENVELOPE_NAMES)}
                | {"doubled": None if row[stream.REJECT_REASON] else 2 * row["number"]} for row in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=OUTPUT)


def raise_on(key: str, error: Exception):
    def fail(ids: list[str]) -> None:
        if key in ids:
            raise error
    return fail


def out_of_memory_above(rows: int):
    def fail(ids: list[str]) -> None:
        if len(ids) > rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return fail


def outcome(table: pa.Table) -> list[tuple]:
    return [(row["id"], row["doubled"], row[stream.REJECT_STAGE], row[stream.REJECT_REASON], row[stream.REJECT_DETAIL])
            for row in table.to_pylist()]


def test_a_batch_that_does_not_raise_is_the_transforms_own_output():
    batch = batch_of("abcd")
    assert isolate(Doubler(lambda ids: None), "double", CONTRACT)(batch).equals(Doubler(lambda ids: None)(batch))


def test_a_batch_that_raises_is_retried_row_by_row_and_only_the_raising_row_is_rejected():
    doubler = Doubler(raise_on("c", ValueError("no number for c")))
    out = isolate(doubler, "double", CONTRACT)(batch_of("abcde"))
    assert doubler.calls == [list("abcde"), ["a"], ["b"], ["c"], ["d"], ["e"]]
    assert out.schema.equals(OUTPUT, check_metadata=True)
    assert outcome(out) == [("a", 0, None, None, None), ("b", 2, None, None, None),
                            ("c", None, "double", "stage_error", "ValueError: no number for c"),
                            ("d", 6, None, None, None), ("e", 8, None, None, None)]
    assert out[stream.PARTITION].to_pylist() == ["p"] * 5
    assert out[stream.PARTITION_TOTAL].to_pylist() == [0, 0, 0, 0, 5]  # the partition still counts every row


def test_in_slices_a_raising_row_costs_a_retry_of_its_slice_only():
    """The runner's order (`runner.built_transform`): slices of the block, each isolated."""
    doubler = Doubler(raise_on("e", ValueError("no number for e")))
    out = in_slices(isolate(doubler, "double", CONTRACT), 3)(batch_of("abcdefgh"))
    assert doubler.calls == [list("abc"), list("def"), ["d"], ["e"], ["f"], list("gh")]
    assert out["id"].to_pylist() == list("abcdefgh") and out["doubled"].to_pylist() == [0, 2, 4, 6, None, 10, 12, 14]
    assert out.schema.equals(OUTPUT)
    small = Doubler(lambda ids: None)
    assert in_slices(small, 8)(batch_of("abcdefgh")).equals(Doubler(lambda ids: None)(batch_of("abcdefgh")))
    assert small.calls == [list("abcdefgh")]


def test_out_of_memory_halves_the_batch_down_to_what_fits():
    doubler = Doubler(out_of_memory_above(2))
    out = isolate(doubler, "double", CONTRACT)(batch_of("abcdefg"))
    assert [len(ids) for ids in doubler.calls] == [7, 4, 2, 2, 3, 2, 1]
    assert out["id"].to_pylist() == list("abcdefg") and out["doubled"].to_pylist() == [0, 2, 4, 6, 8, 10, 12]
    assert out.schema.equals(OUTPUT)


def test_a_row_that_runs_out_of_memory_alone_is_rejected():
    doubler = Doubler(raise_on("c", MemoryError("cannot allocate 80 GiB")))
    out = isolate(doubler, "double", CONTRACT)(batch_of("abcd"))
    assert doubler.calls == [list("abcd"), ["a", "b"], ["c", "d"], ["c"], ["d"]]
    assert outcome(out)[2] == ("c", None, "double", "stage_error", "MemoryError: cannot allocate 80 GiB")
    assert out["doubled"].to_pylist() == [0, 2, None, 6]


def test_rows_rejected_upstream_pass_through_and_are_not_retried():
    doubler = Doubler(raise_on("c", ValueError("no number for c")))
    out = isolate(doubler, "double", CONTRACT)(batch_of("abcd", rejected="b"))
    assert ["b"] not in doubler.calls
    assert outcome(out) == [("a", 0, None, None, None), ("b", None, "ingest", "too_short", "12 ms < 300 ms"),
                            ("c", None, "double", "stage_error", "ValueError: no number for c"), ("d", 6, None, None, None)]


def test_rejected_keeps_its_reason_and_a_batch_of_failures_keeps_the_schema():
    rejecting = isolate(Doubler(raise_on("b", Rejected(Reason.DECODE_ERROR, "not an mp3"))), "double", CONTRACT)
    assert outcome(rejecting(batch_of("abc")))[1] == ("b", None, "double", "decode_error", "not an mp3")

    def every_row(ids: list[str]) -> None:
        raise KeyError(ids[0])

    out = isolate(Doubler(every_row), "double", CONTRACT)(batch_of("abc", rejected="a"))
    assert out.schema.equals(OUTPUT)
    assert outcome(out) == [("a", None, "ingest", "too_short", "12 ms < 300 ms"),
                            ("b", None, "double", "stage_error", "KeyError: 'b'"),
                            ("c", None, "double", "stage_error", "KeyError: 'c'")]


def test_every_model_stage_is_isolated():
    assert all(registry.STAGES[name].isolated for name in ("align", "tokenize", "codebook", "synthesize"))


# Loaded by every Python process of the run (the driver and the Ray workers it starts inherit
# PYTHONPATH): once the align stage is imported, its transform raises for one sample.
FAULT = """
import importlib.machinery
import sys

TARGET = {target!r}


class InjectFault:
    def find_spec(self, name, path, target=None):
        if name != "sylm_data.stages.align":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            align = module.Aligner.__call__

            def faulty(self, batch):
                if TARGET in batch["id"].to_pylist():
                    raise RuntimeError("injected fault on " + TARGET)
                return align(self, batch)

            module.Aligner.__call__ = faulty

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, InjectFault())
"""


@pytest.mark.slow
def test_a_run_rejects_the_sample_its_aligner_fails_on_and_keeps_every_other(tmp_path):
    ids = ["manifest:" + json.loads(line)["id"] for line in MANIFEST.read_text().splitlines()]
    target = ids[5]
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FAULT.format(target=target))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "sylm_data.cli", "run", "--stage", "ingest", "--stage", "align", "--source", "manifest",
         "--input", str(MANIFEST), "--output", str(out), "--set", "align.backend='pocketsphinx'", "--set", "run.num_cpus=2"],
        env=environment, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rejects = read_parquet(out / "rejects" / "align").to_pylist()
    assert [(row["id"], row["stage"], row["reason"], row["detail"]) for row in rejects] == [
        (target, "align", "stage_error", f"RuntimeError: injected fault on {target}")]
    assert sorted(read_parquet(out / "align")["id"].to_pylist()) == sorted(set(ids) - {target})

    # the fault gone, the stage_error rejects are computed again: the sample comes out, nothing twice
    retried = subprocess.run(
        [sys.executable, "-m", "sylm_data.cli", "run", "--stage", "ingest", "--stage", "align", "--source", "manifest",
         "--input", str(MANIFEST), "--output", str(out), "--set", "align.backend='pocketsphinx'", "--set", "run.num_cpus=2",
         "--retry-rejects", "stage_error"],
        capture_output=True, text=True, timeout=300,
    )
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert "1 partitions, 0 already done" in retried.stdout
    assert sorted(read_parquet(out / "align")["id"].to_pylist()) == sorted(ids)
    assert read_parquet(out / "rejects" / "align").num_rows == 0
