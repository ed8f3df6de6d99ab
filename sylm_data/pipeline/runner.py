"""Build and run one streaming Ray Data plan for the chosen stages.

    partitions ─▶ read (source reader, or the previous stage's Parquet) ─▶ stage transforms ─▶ write

Work is done on Ray workers; the driver only sees one small summary per written batch and commits
each partition as soon as all of its samples have come out (see `output`). A run writes its final
stage's rows and the rows of the stages it keeps (`keep`; ingest's always, which hold the audio),
each with the marker a run ending at that stage would write. Partitions committed by an earlier
run (by the final stage and every kept one) are skipped. A run holds the output folder's lock
(`lock`) from start to end, and a run from sources first lists the partitions' ids to reject
repeats (`duplicates`) and, when asked, their transcripts' near-duplicates (`near_duplicates`).
"""

import dataclasses
import errno
import functools
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sylm_data.pipeline import duplicates, lock, near_duplicates, output, partitions, records, registry
from sylm_data.pipeline.config import Config
from sylm_data.pipeline.output import OutputLayout, PartitionTally
from sylm_data.pipeline.stage import SOURCES, Stage, StageConfigError, StageStartFailed, in_slices, isolate
from sylm_data.schemas import stream
from sylm_data.sources import READERS, Partition, SourceError
from sylm_data.stages import ingest


class RunError(RuntimeError):
    """A run cannot start: say what to do, in one line."""


@dataclass
class RunResult:
    record: dict
    record_path: str


STORED = "ingest"  # the audio lives in its rows: a fused run that starts with it keeps them too


def _read(batch: pa.Table, first: Stage, batch_rows: int, contract: pa.Schema | None, audio_from: str | None,
          subsets: tuple[str, ...]):
    partition = Partition(**json.loads(batch["partition"][0].as_py()))
    if first.consumes == SOURCES:
        first_elsewhere = json.loads(batch["first_elsewhere"][0].as_py())
        near_duplicate_of = json.loads(batch["near_duplicate_of"][0].as_py())
        yield from partitions.read_source_partition(partition, first.name, batch_rows, first_elsewhere, subsets,
                                                    near_duplicate_of)
    else:
        yield from partitions.read_stage_partition(partition, contract, batch_rows, audio_from)


def built_transform(stage: Stage, stage_config):
    """The stage's transform as the runner maps it: isolated, and in slices where the stage asks."""
    transform = stage.make_transform(stage_config)
    transform = isolate(transform, stage.name, stage.contract) if stage.isolated else transform
    return in_slices(transform, stage.rows_per_call) if stage.rows_per_call else transform


def _transform(batch: pa.Table, stage: Stage, stage_config) -> pa.Table:
    return built_transform(stage, stage_config)(batch)


class _StageActor:
    """One member of an actor pool: builds the stage's transform (its model) once, then maps batches."""

    def __init__(self, stage: Stage, stage_config) -> None:
        try:
            self.transform = built_transform(stage, stage_config)
        except Exception as error:
            raise StageStartFailed(stage.name, error) from error

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.transform(batch)


def _input_partitions(first: Stage, config: Config, layout: OutputLayout) -> list[Partition]:
    if first.consumes == SOURCES:
        source = config.stages[first.name].source
        if source not in READERS:
            raise RunError(f"unknown source {source!r}; sources are: {', '.join(READERS)}")
        inputs = config.stages[first.name].inputs
        if not inputs:
            raise RunError(f"no input: pass --input PATH_OR_GLOB (repeatable) or set {first.name}.inputs")
        try:
            return READERS[source].partitions(inputs, getattr(config.stages[first.name], "root", None))
        except SourceError as error:
            raise RunError(str(error)) from None
    found = partitions.stage_partitions(layout.stage_dir(first.consumes))
    if not found:
        raise RunError(f"{layout.stage_dir(first.consumes)} holds no finished partition: run --stage {first.consumes} first")
    return found


def _start_ray(address: str | None, config: Config) -> bool:
    """Connect to `address`, or start an embedded Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    options = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = address or os.environ.get("RAY_ADDRESS")  # set for the driver of a Ray job (sylm-data submit)
    if address:
        try:
            ray.init(address=address, **options)
        except ray.exceptions.AuthenticationError as error:
            raise RunError(f"cannot attach to the Ray cluster at {address}: {str(error).split('. ')[0]}; "
                           "set RAY_AUTH_TOKEN to the cluster's token") from None
        except ConnectionError as error:
            raise RunError(f"cannot attach to the Ray cluster at {address}: {str(error).strip().splitlines()[0]}") from None
    else:
        ray.init(num_cpus=config.run.num_cpus, include_dashboard=False, **options)
    interactive = sys.stderr.isatty()
    ray.data.DataContext.get_current().enable_progress_bars = interactive
    if not interactive:  # Ray Data's logged progress would repeat our own progress line
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return True


def run(config: Config, stage_names: list[str], output_dir: str, address: str | None = None, log=print,
        retry_rejects: list[str] = (), keep: list[str] = (), run_id: str | None = None) -> RunResult:
    """Run the stages over every partition not yet committed in `output_dir`; `retry_rejects`:
    reasons whose rejected samples are computed again (their partitions are recomputed whole);
    `keep`: stages of a fused run whose rows are written too (DIR/<stage>/, committed as a run
    ending there would commit them); `run_id`: the record's name (default: a new one)."""
    stages = registry.plan(stage_names or config.run.stages)
    kept = _kept([stage.name for stage in stages], list(keep))
    for stage in stages:
        try:
            stage.preflight(config.stages[stage.name])
        except StageConfigError as error:
            raise RunError(f"[{stage.name}] {error}") from None
    layout = OutputLayout(output_dir)
    run_id = run_id or records.new_run_id()
    run_lock = lock.RunLock(layout.root, run_id)
    try:
        run_lock.acquire()
    except lock.LockHeld as error:
        raise RunError(str(error)) from None
    try:
        return _run_locked(config, stages, kept, layout, run_id, run_lock, address, log, list(retry_rejects))
    except (lock.LockLost, output.MarkerError) as error:
        raise RunError(str(error)) from None
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise RunError(_disk_full(layout)) from None
        raise
    finally:
        run_lock.release()


def _kept(names: list[str], keep: list[str]) -> list[str]:
    """The stages a run of `names` writes before its final one, in pipeline order: those named in
    `keep` (the final stage is written anyway), and ingest when the run starts with it."""
    foreign = [name for name in keep if name not in names]
    if foreign:
        raise RunError(f"--keep {foreign[0]}: not a stage of this run ({', '.join(names)}); "
                       f"a stage not in the run is written by its own run")
    chosen = set(keep) | ({STORED} if names[0] == STORED else set())
    return [name for name in names[:-1] if name in chosen]


def _upstream_hash(first: Stage, layout: OutputLayout) -> str | None:
    """The config hash recorded in the folder the run's first stage reads (None: it reads sources)."""
    if first.consumes == SOURCES:
        return None
    found = {marker["config_hash"] for marker in layout.markers(first.consumes).values()}
    if len(found) > 1:
        raise RunError(f"{layout.stage_dir(first.consumes)} holds partitions of {len(found)} configs: "
                       "run the stages that wrote it again into a new --output")
    return found.pop() if found else None


def _run_locked(config, stages, kept, layout, run_id, run_lock, address, log, retry_rejects) -> RunResult:
    names = [stage.name for stage in stages]
    final = stages[-1]
    written = [*kept, final.name]  # in commit order: the final stage's marker is the partition's commit point
    hashes = config.stage_hashes(names, _upstream_hash(stages[0], layout))
    all_partitions = _input_partitions(stages[0], config, layout)
    committed = {name: layout.markers(name) for name in written}
    for name in written:
        for marker in committed[name].values():
            if marker["config_hash"] != hashes[name]:
                raise RunError(
                    f"{layout.stage_dir(name)} was written with another config ({marker['config_hash']}, now "
                    f"{hashes[name]}): use a new --output, or delete that folder to recompute"
                )
    # done: committed by the final stage and by every kept one (a kept stage added to a finished run
    # recomputes its partitions)
    done = {partition: marker for partition, marker in committed[final.name].items()
            if all(partition in committed[name] for name in kept)}
    for partition in _with_rejects(done, retry_rejects):
        layout.uncommit(partition, final.name)
        del done[partition]
    pending = [p for p in all_partitions if p.id not in done]
    for partition in pending:
        layout.clean(partition.id, final.name, names, kept)
    audio_from = _audio_source(stages[0], pending, layout)
    log(f"{'+'.join(names)}: {len(all_partitions)} partitions, {len(all_partitions) - len(pending)} already done")

    started = time.time()
    commit = functools.partial(_commit, layout, names, written, hashes, run_id, run_lock)
    if stages[0].consumes != SOURCES:
        # a previous stage's partition with no rows (all rejected) is complete before it starts
        for partition in [p for p in pending if not _has_rows(p)]:
            commit(partition, PartitionTally())
            pending.remove(partition)
    tallies: dict[str, PartitionTally] = defaultdict(PartitionTally)
    near_summary = None
    workers = Workers(address, config)
    try:
        if pending:
            if not workers.attached(address):  # refused before an embedded Ray starts: one line, no Ray noise
                _check_room(stages, config, config.run.num_cpus or os.cpu_count())
            workers.start()
            first_elsewhere, near_duplicate_of = {}, {}
            if stages[0].consumes == SOURCES:
                settings = _near_duplicate_settings(stages[0], config)
                _list_sources(pending, layout, workers, _subsets(stages[0], config), settings)
                first_elsewhere = _repeats(pending, list(done), layout, workers, stages[0].name)
                if settings.enabled:
                    found = _near_duplicates(pending, list(done), first_elsewhere, layout, workers, stages[0].name,
                                             settings)
                    near_duplicate_of = near_duplicates.by_partition(found)
                    near_summary = found.summary(settings.mode)
                    log(f"near-duplicates: {found.clusters} clusters of {found.members} transcripts, "
                        f"{near_summary['rejected']} of them to reject in the partitions to do")
            _check_room(stages, config, workers.cpus())
            plan = _plan(stages, pending, first_elsewhere, near_duplicate_of, config, layout, run_id, kept, audio_from)
            summaries = _summaries(plan)
            try:
                _commit_as_complete(summaries, pending, tallies, commit, started, log)
            finally:
                summaries.close()  # stops Ray Data's executor before Ray shuts down, also on an error
        layout.drop_staging(final.name, names, kept)
        record = _record(run_id, config, names, hashes[final.name], layout, final.name, tallies, all_partitions, len(done),
                         started)
        record["kept"] = {name: str(layout.stage_dir(name)) for name in kept}
        if near_summary is not None:
            record["near_duplicates"] = near_summary
        if final.finalize is not None:
            log(f"{final.name}: finalizing")
            run_lock.check()
            try:
                record["finalized"] = final.finalize(config.stages[final.name], layout.stage_dir(final.name), workers.map)
            except ValueError as error:
                raise RunError(f"[{final.name}] {error}") from None
    except Exception as error:
        if _is_disk_full(error):
            raise RunError(_disk_full(layout)) from None
        start_failure = StageStartFailed.found_in(str(error))
        if start_failure:
            raise RunError(start_failure) from None
        raise
    finally:
        workers.close()
    return RunResult(record, str(records.write(layout.runs_dir, record)))


class Workers:
    """Ray for this run: started (or attached to) on first use, shut down at the end if this run started it."""

    def __init__(self, address: str | None, config: Config) -> None:
        self.address, self.config, self.started = address, config, None

    def start(self) -> None:
        if self.started is None:
            self.started = _start_ray(self.address, self.config)

    @staticmethod
    def attached(address: str | None) -> bool:
        """Whether this run uses a Ray that is already there (a cluster, or one this process started)."""
        import ray

        return bool(address or os.environ.get("RAY_ADDRESS")) or ray.is_initialized()

    @staticmethod
    def cpus() -> float:
        import ray

        return ray.cluster_resources().get("CPU", 0)

    def map(self, function, items: list) -> list:
        """`function(item)` for each item, as Ray tasks of one CPU each; the results in order."""
        if not items:
            return []
        self.start()
        import ray

        remote = ray.remote(num_cpus=1)(_apply)
        shared = ray.put(function)
        return ray.get([remote.remote(shared, item) for item in items])

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()


def _audio_source(first: Stage, pending: list[Partition], layout: OutputLayout) -> str | None:
    """The ingest output, when the first stage decodes audio its input rows leave there."""
    if not first.needs_audio or not stream.carries_audio(registry.STAGES[first.consumes].contract):
        return None
    stored = layout.markers(STORED)
    missing = [p.id for p in pending if p.id not in stored]
    if missing:
        raise RunError(f"{layout.stage_dir(STORED)} lacks the committed rows of {len(missing)} partition(s) "
                       f"(e.g. {missing[0]}), which hold their audio: run ingest (and {first.consumes}) again for them")
    return str(layout.stage_dir(STORED))


def _with_rejects(markers: dict[str, dict], reasons: list[str]) -> list[str]:
    """The committed partitions holding rejects of any of `reasons`."""
    return [partition for partition, marker in markers.items()
            if any(key.split("/", 1)[1] in reasons for key, count in marker["rejected"].items() if count)]


def _is_disk_full(error: BaseException | None) -> bool:
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _disk_full(layout: OutputLayout) -> str:
    return f"no space left on the device of {layout.root}: free space, then rerun the same command to resume"


def _apply(function, item):
    return function(item)


def _subsets(first: Stage, config: Config) -> tuple[str, ...]:
    """The source subsets the first stage keeps (YODAS2's `ingest.subsets`): the reader skips the others' audio."""
    return tuple(getattr(config.stages[first.name], "subsets", ())) if first.consumes == SOURCES else ()


def _near_duplicate_settings(first: Stage, config: Config) -> near_duplicates.Settings:
    section = config.stages[first.name]
    if isinstance(section, ingest.IngestConfig):
        return ingest.near_duplicate_settings(section)
    return near_duplicates.Settings()


def _list_sources(pending: list[Partition], layout: OutputLayout, workers: Workers, subsets: tuple[str, ...],
                  settings: near_duplicates.Settings) -> None:
    """Each pending partition's ids and, with near-duplicates on, its MinHash listing, where no run listed them yet."""
    folder = _near_duplicates_dir(layout)

    def listed(partition: str) -> bool:
        files = [duplicates.ids_file(layout.ids_dir, partition)]
        files += near_duplicates.listing_files(folder, partition, settings) if settings.enabled else []
        return all(path.exists() for path in files)

    unlisted = [p for p in pending if not listed(p.id)]
    workers.map(functools.partial(_list_ids, ids_dir=str(layout.ids_dir), subsets=subsets,
                                  near_duplicates_dir=str(folder), settings=settings), unlisted)


def _repeats(pending: list[Partition], committed: list[str], layout: OutputLayout, workers: Workers,
             reader_stage: str) -> dict[str, str]:
    """Per pending partition, its ids that occur first in another partition (see `duplicates`)."""
    ids_dir = layout.ids_dir
    listed = sorted({p.id for p in pending} | {c for c in committed if duplicates.ids_file(ids_dir, c).exists()})
    in_bucket = functools.partial(duplicates.repeats_in_bucket, ids_dir=str(ids_dir), partitions=listed, committed=committed,
                                  rejects_dir=str(layout.rejects_dir(reader_stage)))
    return duplicates.by_partition([r for found in workers.map(in_bucket, list(range(duplicates.BUCKETS))) for r in found])


def _near_duplicates(pending: list[Partition], committed: list[str], first_elsewhere: dict[str, str], layout: OutputLayout,
                     workers: Workers, reader_stage: str, settings: near_duplicates.Settings) -> near_duplicates.Found:
    """The near-duplicate clusters of the pending and committed partitions (see `near_duplicates`)."""
    folder = _near_duplicates_dir(layout)
    listed = sorted({p.id for p in pending}
                    | {c for c in committed if near_duplicates.listing_files(folder, c, settings)[1].exists()})
    repeats = {partition: json.loads(ids) for partition, ids in first_elsewhere.items()}
    rejects_dir = layout.rejects_dir(reader_stage) if settings.mode == "drop" else None
    return near_duplicates.find(folder, listed, committed, repeats, rejects_dir, settings, workers.map)


def _near_duplicates_dir(layout: OutputLayout) -> Path:
    return layout.root / "_near_duplicates"


def _list_ids(partition: Partition, ids_dir: str, subsets: tuple[str, ...], near_duplicates_dir: str | None = None,
              settings: near_duplicates.Settings | None = None) -> None:
    listing = partitions.source_listing(partition, subsets)
    duplicates.write_ids([sample_id for sample_id, _, _ in listing], duplicates.ids_file(Path(ids_dir), partition.id))
    if settings is not None and settings.enabled:
        near_duplicates.write_listing(listing, Path(near_duplicates_dir), partition.id, settings)


def read_batch_rows(contract: pa.Schema | None, audio_from: str | None, run_config) -> int:
    """Rows per batch the run's first stage reads (`contract`: that of the rows it reads, None for
    sources): `run.batch_rows` where they hold audio (sources, the ingest output, rows joined with
    their audio), else `run.batch_rows_without_audio`: rows of a few KB, of which a read of 64 at
    a time took 8x as long as one of 4,096 (Ray Data then gathers them into bigger blocks)."""
    without_audio = contract is not None and stream.AUDIO.name not in contract.names and audio_from is None
    return run_config.batch_rows_without_audio if without_audio else run_config.batch_rows


def _plan(stages: list[Stage], pending: list[Partition], first_elsewhere: dict[str, str], near_duplicate_of: dict[str, str],
          config: Config, layout: OutputLayout, run_id: str, kept: list[str], audio_from: str | None):
    """The Ray Data plan: partitions -> read -> each stage's transform -> write; yields batch summaries."""
    import ray

    first, final = stages[0], stages[-1]
    contract = registry.STAGES[first.consumes].contract if first.consumes != SOURCES else None
    items = [{"partition": json.dumps(dataclasses.asdict(p)), "first_elsewhere": first_elsewhere.get(p.id, "{}"),
              "near_duplicate_of": near_duplicate_of.get(p.id, "{}")} for p in pending]
    dataset = ray.data.from_items(items, override_num_blocks=len(pending))
    dataset = dataset.map_batches(
        _read, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"first": first, "batch_rows": read_batch_rows(contract, audio_from, config.run), "contract": contract,
                   "audio_from": audio_from, "subsets": _subsets(first, config)},
    )
    input_rows = sum(m["rows_out"] for m in layout.markers(first.consumes).values()) if first.consumes != SOURCES else 0
    for stage in stages:
        stage_config = stage.prepare(config.stages[stage.name], input_rows)
        options = stage.map_options(stage_config)
        arguments = {"stage": stage, "stage_config": stage_config}
        if options.actors:
            # max_restarts (Ray Data's own default for pools: a killed actor restarts and its batch is
            # retried) given explicitly also keeps Ray from fusing the reading into the actors: fused,
            # each actor call would read `batch_size` whole partitions (decoding on the GPU's process)
            # and commit them in bursts. Ray < 2.64 takes it, as a remote argument it calls deprecated
            # (RayDeprecationWarning); the pin in pyproject says so.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                dataset = dataset.map_batches(
                    _StageActor, fn_constructor_kwargs=arguments,
                    compute=ray.data.ActorPoolStrategy(size=max(options.concurrency, 1)),
                    num_cpus=options.num_cpus, num_gpus=options.num_gpus, batch_size=options.batch_size,
                    batch_format="pyarrow", max_restarts=-1,
                )
        else:
            tasks = ray.data.TaskPoolStrategy(size=options.concurrency) if options.concurrency else None
            dataset = dataset.map_batches(_transform, fn_kwargs=arguments, batch_size=options.batch_size, batch_format="pyarrow",
                                          num_cpus=options.num_cpus, compute=tasks)
        if stage.name in kept:
            dataset = dataset.map_batches(output.store_batch, batch_size=None, batch_format="pyarrow", fn_kwargs={
                "root": str(layout.root), "run_id": run_id, "stage": stage.name, "contract": stage.contract})
    return dataset.map_batches(
        output.write_batch, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"root": str(layout.root), "run_id": run_id, "final_stage": final.name, "contract": final.contract},
    )


def _summaries(plan):
    """The write step's summaries as they come: without prefetching, which would hold each block
    back until the next one exists (behind a model stage, until the end of the run)."""
    for batch in plan.iter_batches(batch_size=None, prefetch_batches=0, batch_format="pyarrow"):
        yield from batch.to_pylist()


def _check_room(stages: list[Stage], config: Config, cpus: float) -> None:
    """Refuse actor pools that would hold every CPU: the reading and writing tasks would never run."""
    pools = [(stage.name, stage.map_options(config.stages[stage.name])) for stage in stages]
    held = sum(max(options.concurrency, 1) * options.num_cpus for _, options in pools if options.actors)
    if held and held >= cpus:
        named = ", ".join(f"{name}.actors={max(options.concurrency, 1)}" for name, options in pools if options.actors)
        raise RunError(f"{named} would hold all {cpus:g} CPUs Ray has, leaving none to read and write: "
                       "use fewer actors, or more CPUs (run.num_cpus, or a bigger cluster)")


def _commit_as_complete(summaries, pending, tallies, commit, started: float, log) -> None:
    by_id = {p.id: p for p in pending}
    committed, last_report, refused = 0, 0.0, []
    for summary in summaries:
        tally = tallies[summary["partition"]]
        tally.add(summary)
        if tally.complete:
            try:
                commit(by_id[summary["partition"]], tally)
            except output.StagingMismatch as error:
                log(f"  not committed: {error}")
                refused.append(summary["partition"])
                continue
            committed += 1
            if time.time() - last_report > 2 or committed == len(pending):
                last_report = time.time()
                log(_progress_line(committed, len(pending), tallies, started))
    unfinished = refused + [p.id for p in pending if not tallies[p.id].complete]
    if unfinished:
        raise RunError(f"partitions did not complete: {', '.join(unfinished[:5])}; rerun the same command to resume")


def _commit(layout, names, written, hashes, run_id, run_lock, partition: Partition, tally: PartitionTally) -> None:
    """Commit `partition` in each written stage (kept ones, then the final one), each marker the one
    a run of the stages up to it writes: its input count, the rejects of those stages, their hash."""
    final = written[-1]
    markers = {}
    for name in written:
        upto = names[: names.index(name) + 1]
        rejected = {key: n for key, n in tally.rejected.items() if key.split("/", 1)[0] in upto}
        markers[name] = {
            "partition": dataclasses.asdict(partition),
            "rows_in": tally.total,
            # a kept stage's audio is not summed on the way (its rows' duration is the final's or more)
            "rows_out": tally.rows_out if name == final else tally.total - sum(rejected.values()),
            "audio_ms": tally.audio_ms if name == final else None,
            "rejected": rejected,
            "config_hash": hashes[name],
            "run_id": run_id,
        }
    run_lock.check()
    output.commit(layout, partition.id, names, markers)


def _has_rows(partition: Partition) -> bool:
    return any(pq.read_metadata(file).num_rows for file in Path(partition.path).glob("*.parquet"))


def _progress_line(committed: int, pending: int, tallies: dict[str, PartitionTally], started: float) -> str:
    elapsed = max(time.time() - started, 1e-9)
    rows = sum(t.rows for t in tallies.values())
    out = sum(t.rows_out for t in tallies.values())
    audio_s = sum(t.audio_ms for t in tallies.values()) / 1000
    return (
        f"  [{committed}/{pending} partitions] {rows:,} samples, {out:,} kept, {rows - out:,} rejected, "
        f"{audio_s / elapsed:,.0f} audio-s/s"
    )


def _record(run_id, config, names, config_hash, layout, final_name, tallies, all_partitions, n_skipped, started) -> dict:
    wall_s = time.time() - started
    this_run = [t for t in tallies.values() if t.complete]
    rejected_now = sum((t.rejected for t in this_run), Counter())
    markers = layout.markers(final_name).values()
    rejected_all = sum((Counter(m["rejected"]) for m in markers), Counter())
    audio_s = sum(t.audio_ms for t in this_run) / 1000
    rows = sum(t.total for t in this_run)
    record = {
        "run_id": run_id,
        "stages": names,
        "output": str(layout.stage_dir(final_name)),
        "config": config.to_dict(),
        "config_hash": config_hash,
        "versions": records.package_versions(),
        "partitions": {"total": len(all_partitions), "skipped_done": n_skipped, "processed": len(this_run)},
        "this_run": records.stage_counts(names, rows, rejected_now),
        "cumulative": records.stage_counts(names, sum(m["rows_in"] for m in markers), rejected_all),
        "wall_s": round(wall_s, 3),
        "throughput": {
            "samples_per_s": round(rows / wall_s, 2) if wall_s else 0,
            "audio_s": round(audio_s, 3),
            "audio_s_per_s": round(audio_s / wall_s, 2) if wall_s else 0,
        },
    }
    read_at = records.hub_commits(partition.path for partition in all_partitions)
    if read_at:  # hf:// inputs: the commit each repo was listed and read at this run (one per repo)
        record["hub_commits"] = {repo: commits[0] for repo, commits in read_at.items()}
        # and those the output's partitions were read at, over all runs: more than one if a resumed
        # run read a branch that had moved
        record["hub_commits_in_output"] = records.hub_commits(marker.get("partition", {}).get("path", "") for marker in markers)
    return record
