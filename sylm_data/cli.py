"""The `sylm-data` command."""

import glob
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

# Each command imports what it needs (Ray, torch, the stages) when it runs: `--help` stays instant.
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build syllable-text interleaved speech corpora.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _absolute_inputs(patterns: list[str]) -> list[str]:
    """Local paths and globs made absolute (the run record then says where they were); a glob stays
    a glob, so the partitions are named relative to its static prefix. hf:// patterns stay as given."""
    absolute = []
    for pattern in patterns:
        if pattern.startswith("hf://"):
            absolute.append(pattern)
            continue
        pattern = os.path.abspath(os.path.expanduser(pattern))
        if not glob.glob(pattern, recursive=True):
            _fail(f"no input matches {pattern!r}")
        absolute.append(pattern)
    return absolute


@app.command()
def run(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (DIR/<stage>/, DIR/rejects/, DIR/runs/).")],
    config: Annotated[Optional[Path], typer.Option(help="TOML config file.")] = None,
    stage: Annotated[Optional[list[str]], typer.Option(help="Stage to run (repeatable); default: the configured stages.")] = None,
    source: Annotated[Optional[str], typer.Option(help="Source kind for ingest: emilia, emilia-yodas, yodas2, manifest, lhotse.")] = None,
    input: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="Input path, glob or hf://OWNER/NAME[@REVISION]/PATTERN (repeatable): speech corpora for ingest, a text corpus for synthesize.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: SECTION.KEY=VALUE (repeatable).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray address (auto, ray://HOST:PORT); default: embedded local Ray.")] = None,
    retry_rejects: Annotated[Optional[list[str]], typer.Option("--retry-rejects", help="Compute the samples rejected for REASON again (e.g. stage_error; repeatable).")] = None,
    keep: Annotated[Optional[list[str]], typer.Option(help="Also write the rows of this stage of a fused run to OUTPUT/STAGE/ (repeatable).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's and the libraries' own output here instead of in OUTPUT/runs/RUN.log.")] = False,
) -> None:
    """Run stages in pipeline order; a stage not in the run reads its input from OUTPUT."""
    from sylm_data.pipeline import config as config_module
    from sylm_data.pipeline import registry
    from sylm_data.pipeline.stage import SOURCES

    overrides = list(set_ or [])
    if source:
        overrides.append(f"ingest.source={source!r}")
    try:
        cfg = config_module.load(config, overrides)
        if input:  # the inputs of the stage that reads sources: ingest, or synthesize
            first = registry.plan(list(stage or cfg.run.stages))[0]
            cfg.stages[first.name if first.consumes == SOURCES else "ingest"].inputs = _absolute_inputs(list(input))
    except (config_module.ConfigError, registry.PlanError) as error:
        _fail(str(error))
    result, log_path = _run_quietly(cfg, list(stage or []), output, verbose, address=address,
                                    retry_rejects=list(retry_rejects or []), keep=list(keep or []))
    _print_summary(result.record, result.record_path, log_path)


def _run_quietly(cfg, stages: list[str], output: Path, verbose: bool, **options):
    """`runner.run`, with what Ray and the libraries print sent to OUTPUT/runs/RUN.log unless
    `verbose`; (result, that log's path if anything came); a run that cannot start is one error line."""
    from sylm_data import quiet
    from sylm_data.pipeline import config as config_module
    from sylm_data.pipeline import records, registry, runner

    run_id = records.new_run_id()
    log_path = Path(output) / "runs" / f"{run_id}.log"
    failure = None
    with quiet.to_log(None if verbose else log_path) as console:
        try:
            result = runner.run(cfg, stages, str(output), log=console.line, run_id=run_id, **options)
        except (config_module.ConfigError, registry.PlanError, runner.RunError) as error:
            failure = str(error)
    if failure is not None:
        _fail(failure)
    return result, (log_path if log_path.exists() else None)


@app.command()
def submit(
    command: Annotated[Optional[list[str]], typer.Argument(help="The sylm-data command to run on the cluster, after --.")] = None,
    address: Annotated[str, typer.Option(envvar="RAY_API_SERVER_ADDRESS", help="Ray dashboard address of the cluster.")] = "http://127.0.0.1:8265",
    working_dir: Annotated[Optional[Path], typer.Option(help="Folder uploaded as the job's working directory.")] = None,
    pip: Annotated[Optional[list[str]], typer.Option(help="pip requirement installed for the job (repeatable).")] = None,
    env: Annotated[Optional[list[str]], typer.Option(help="Environment variable for the job, KEY=VALUE (repeatable).")] = None,
    job_id: Annotated[Optional[str], typer.Option(help="Submission id to use (default: Ray picks one).")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the job id and return without following it.")] = False,
    status: Annotated[Optional[str], typer.Option("--status", help="Print the status of job ID.")] = None,
    stop: Annotated[Optional[str], typer.Option("--stop", help="Stop job ID.")] = None,
    logs: Annotated[Optional[str], typer.Option("--logs", help="Print the logs of job ID so far.")] = None,
) -> None:
    """Run a sylm-data command as a Ray job on a cluster: `sylm-data submit --address http://HEAD:8265 -- run --stage align -o s3dir`.

    Follows the job's logs and exits with its outcome (0 when it succeeded)."""
    from sylm_data.pipeline import cluster

    try:
        client = cluster.connect(address)
        if status or stop or logs:
            if stop:
                client.stop_job(stop)
            target = status or stop or logs
            typer.echo(client.get_job_logs(target) if logs else cluster.status(client, target))
            return
        variables = {}
        for item in env or []:
            key, separator, value = item.partition("=")
            if not separator or not key:
                _fail(f"--env {item!r}: expected KEY=VALUE")
            variables[key] = value
        submitted = cluster.submit(client, list(command or []), str(working_dir) if working_dir else None,
                                   list(pip or []), variables, job_id)
    except cluster.ClusterError as error:
        _fail(str(error))
    except RuntimeError as error:  # the Jobs API reports unknown ids and refused submissions this way
        _fail(str(error).strip().splitlines()[0])
    typer.echo(f"submitted job {submitted} to {address}", err=True)
    if no_wait:
        typer.echo(submitted)
        return
    final = cluster.follow(client, submitted, lambda lines: typer.echo(lines, nl=False))
    typer.echo(f"job {submitted}: {final}", err=True)
    raise typer.Exit(0 if final == "SUCCEEDED" else 1)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option(help="TOML config with sections model, data, optim and run.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: SECTION.KEY=VALUE (repeatable).")] = None,
    task: Annotated[Optional[str], typer.Option(help="lm (default) or t2t: a text-to-token model on pairs shards.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show DeepSpeed's and the libraries' own output here instead of in OUTPUT/runs/.")] = False,
) -> None:
    """Continue pre-training a causal LM on shard folders with DeepSpeed (one process per GPU:
    run it under torchrun or the deepspeed launcher for several; resumes from OUTPUT/checkpoints)."""
    from sylm_data import quiet
    from sylm_data.pipeline import config as config_module
    from sylm_data.pipeline import records
    from sylm_data.train import config as train_config

    try:
        cfg = train_config.load(config, list(set_ or []) + ([f"model.task={task!r}"] if task else []))
    except config_module.ConfigError as error:
        _fail(str(error))
    # one log per rank (torchrun and the deepspeed launcher set RANK)
    log_path = Path(cfg.run.output) / "runs" / f"{records.new_run_id()}-rank{os.environ.get('RANK', '0')}.log"
    failure = None
    with quiet.to_log(None if verbose else log_path) as console:
        from sylm_data.train import data, loop
        from sylm_data.train.t2t import T2TError
        from sylm_data.train.vocab import VocabularyError

        try:
            result = loop.train(cfg, echo=console.error_line, progress_to=console.err)
        except (config_module.ConfigError, data.DataError, VocabularyError, T2TError, loop.TrainError) as error:
            failure = str(error)
    if failure is not None:
        _fail(failure)
    if result["rank"] == 0:
        typer.echo(f"{result['outcome']} at step {result['step']}, loss {result['loss']:.4f}; output: {result['output']}")
    if result["outcome"] == "interrupted":
        typer.echo("checkpoint saved; run the same command to resume", err=True)
        raise typer.Exit(3)  # not done: a Job controller should run it again


def _print_summary(record: dict, record_path: str, log_path: Path | None = None) -> None:
    typer.echo("")
    for counts in record["cumulative"]:
        rejected = ", ".join(f"{reason} {n}" for reason, n in counts["rejected"].items()) or "none"
        typer.echo(f"{counts['stage']:>10}: {counts['in']:,} in, {counts['out']:,} out; rejected: {rejected}")
    throughput = record["throughput"]
    typer.echo(
        f"this run: {record['partitions']['processed']} partitions in {record['wall_s']:.1f} s "
        f"({throughput['audio_s']:,.0f} audio-s, {throughput['audio_s_per_s']:,.1f} audio-s/s); "
        f"{record['partitions']['skipped_done']} already done"
    )
    typer.echo(f"output: {record['output']}   record: {record_path}")
    if record.get("kept"):
        typer.echo("kept: " + "   ".join(record["kept"].values()))
    if log_path is not None:
        typer.echo(f"log (Ray and the libraries; --verbose shows it here): {log_path}")
    if record.get("finalized"):
        typer.echo("finalized: " + ", ".join(f"{key} {value}" for key, value in record["finalized"].items()))


@app.command()
def stages() -> None:
    """List the stages with what they read and write."""
    from sylm_data.pipeline import registry

    for stage in registry.STAGES.values():
        reads = "source corpora" if stage.consumes == "sources" else f"DIR/{stage.consumes}/"
        typer.echo(f"{stage.name:<12} reads {reads:<16} writes DIR/{stage.name}/ ({stage.contract.metadata[b'sylm.contract'].decode()} rows)")
        typer.echo(f"{'':<12} {stage.description}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A stage output folder, a rejects folder, a shard folder, or an output DIR.")],
    samples: Annotated[int, typer.Option(help="How many rows to render.")] = 3,
) -> None:
    """Summarise a stage output, rejects or shards: counts, durations, languages, reasons, samples."""
    from sylm_data import inspect as inspect_module

    try:
        typer.echo(inspect_module.summarize(path, samples))
    except inspect_module.InspectError as error:
        _fail(str(error))


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="An output DIR (DIR/ingest/, DIR/align/, …, DIR/rejects/, DIR/runs/).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The HTML file to write (default: DIR/report.html).")] = None,
    samples: Annotated[int, typer.Option(help="Utterances in the viewer, at most 8 (the page embeds their audio, at most 2 MB each).")] = 3,
) -> None:
    """Write one self-contained HTML page about DIR: the funnel per stage with example ids per
    reject reason, histograms (duration, words/s, units/s, speech share), the language and source
    mix, and a viewer of a few utterances (audio player, waveform with word and unit boundaries,
    the interleaved document). It loads nothing from the network. Its size is mostly the viewer's
    audio: at most 8 samples; audio over 2 MB is drawn but not embedded."""
    from sylm_data import report as report_module
    from sylm_data.pipeline.output import MarkerError

    try:
        written = report_module.write(path, output, samples)
    except (report_module.ReportError, MarkerError, OSError) as error:
        _fail(str(error))
    typer.echo(f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB)")


@app.command()
def quickstart(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("out"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's and the libraries' own output here instead of in OUTPUT/runs/RUN.log.")] = False,
) -> None:
    """Run the pipeline on the bundled sample (Emilia layout, embedded Ray, offline backends):
    ingest + align (pocketsphinx), then the MFCC codebook, then tokenize + interleave into shards,
    keeping OUTPUT/ingest, OUTPUT/align and OUTPUT/tokenize for the other flows (pairs, eval)."""
    from sylm_data.pipeline import config as config_module
    from sylm_data.sample import layouts

    tars = layouts.write_emilia(output / "source", layouts.sample_utterances(), shard_size=8)
    cfg = config_module.load(None, ["align.backend='pocketsphinx'", "codebook.clusters=64", "codebook.encoder='mfcc'", "tokenize.encoder='mfcc'",
                                    f"tokenize.codebook={str((output / 'codebook').resolve())!r}"])
    cfg.stages["ingest"].source = "emilia"
    cfg.stages["ingest"].inputs = [str(path.resolve()) for path in tars]
    for stages, keep in ((["ingest", "align"], []), (["codebook"], []), (["tokenize", "interleave"], ["tokenize"])):
        result, log_path = _run_quietly(cfg, stages, output, verbose, address=None, keep=keep)
        _print_summary(result.record, result.record_path, log_path)
    typer.echo(f"shards: {output / 'shards'}   inspect them: sylm-data inspect {output / 'shards'}")


@app.command()
def decode(
    tokenizer: Annotated[str, typer.Argument(help="A trained model (OUTPUT/final of `train`), or the base model or tokenizer (id or folder).")],
    sample_file: Annotated[str, typer.Argument(metavar="SAMPLE.json", help="One sample as JSON (a shard's .json member); - reads standard input.")],
    ids: Annotated[bool, typer.Option("--ids", help="Also print the token ids.")] = False,
) -> None:
    """Show a sample the way `train` tokenizes it: its tokens by kind and the text the tokenizer
    decodes them to (units and markers stay, even with skip_special_tokens: they are not special)."""
    from transformers import AutoTokenizer

    from sylm_data import offline
    from sylm_data.train import data

    try:
        loaded = AutoTokenizer.from_pretrained(tokenizer, local_files_only=offline.local_only(tokenizer))
    except (OSError, ValueError) as error:
        _fail(f"cannot load tokenizer {tokenizer!r}: {offline.reason(error, tokenizer)}")
    try:
        document = json.loads(sys.stdin.read() if sample_file == "-" else Path(sample_file).read_text())
        token_ids, counts, added = data.render_for_reading(document, loaded)
    except OSError as error:
        _fail(f"cannot read {sample_file}: {error.strerror or error}")
    except ValueError as error:  # bad JSON, a sample off the contract, a tokenizer with part of the speech tokens
        _fail(f"{sample_file}: {str(error).splitlines()[0]}")
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    typer.echo(f"{len(token_ids)} tokens: {kinds}" + ("   (speech tokens added here as `train` adds them)" if added else ""))
    if ids:
        typer.echo(json.dumps(token_ids))
    typer.echo(loaded.decode(token_ids))


eval_app = typer.Typer(no_args_is_help=True, help="Measure a stage's output against references.")
app.add_typer(eval_app, name="eval")


@eval_app.command("align")
def eval_align(
    path: Annotated[Path, typer.Argument(help="An align output folder (DIR/align).")],
    reference: Annotated[Path, typer.Option(help="JSONL of {id, words: [{start_ms, [index]}]} reference onsets.")],
) -> None:
    """Word start errors: median, 90th percentile, share within 50 / 100 ms."""
    from sylm_data import evaluate

    try:
        result = evaluate.score_folder(path, reference)
    except (OSError, ValueError) as error:
        _fail(str(error))
    typer.echo("\n".join(result.lines()))


@eval_app.command("quality")
def eval_quality(
    fixture: Annotated[Optional[Path], typer.Option(help="A labelled manifest (lines with `labels`); default: speak the espeak-ng fixture into a temporary folder.")] = None,
    keep: Annotated[Optional[Path], typer.Option(help="Speak the espeak-ng fixture into this folder and keep it.")] = None,
) -> None:
    """Precision and recall of each label-quality check at the default bounds, over labelled
    utterances: ingest + align (pocketsphinx). The default fixture needs Debian's espeak-ng."""
    import tempfile

    from sylm_data.quality import evaluate as quality_eval

    with tempfile.TemporaryDirectory() as scratch:
        try:
            manifest = fixture or quality_eval.build_fixture(keep or Path(scratch))
            result = quality_eval.evaluate(manifest)
        except (OSError, ValueError, RuntimeError) as error:
            _fail(str(error))
    typer.echo("\n".join(result.lines()))


@eval_app.command("t2t")
def eval_t2t(
    model: Annotated[str, typer.Argument(help="A text-to-token model: OUTPUT/final of `sylm-data train --task t2t`.")],
    pairs: Annotated[Path, typer.Option(help="Held-out pairs: DIR/pairs-heldout of the pairs stage.")],
    limit: Annotated[int, typer.Option(help="At most this many pairs.")] = 1000,
) -> None:
    """Unit accuracy and perplexity (teacher-forced), and generated / reference unit counts."""
    from transformers.utils import logging as transformers_logging

    from sylm_data.train import t2t

    transformers_logging.disable_progress_bar()  # its weight-loading bar would come before the one JSON line
    try:
        network, meta = t2t.load(model)
        result = t2t.evaluate(network, meta, t2t.heldout_pairs(pairs, limit))
    except (OSError, ValueError) as error:
        _fail(str(error))
    typer.echo(json.dumps(result))


export_app = typer.Typer(no_args_is_help=True, help="Write a stage's output in another toolkit's format.")
app.add_typer(export_app, name="export")


@export_app.command("lhotse")
def export_lhotse(
    path: Annotated[Path, typer.Argument(help="An align or tokenize output folder (DIR/align, DIR/tokenize); the audio comes from DIR/ingest.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The lhotse Shar folder to write (new, or empty).")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's own output here instead of in DIR/runs/RUN.log.")] = False,
) -> None:
    """lhotse Shar, a shard per partition: a cut per row with one supervision (text, language,
    speaker, word alignment), the audio bytes as ingest stored them; the other columns (tokenize:
    the units and their times) in each cut's custom fields."""
    from sylm_data import quiet
    from sylm_data.export import lhotse as lhotse_export
    from sylm_data.pipeline import config as config_module
    from sylm_data.pipeline import records, runner

    cfg = config_module.load()
    log_path = path.parent / "runs" / f"{records.new_run_id()}.log"
    failure = None
    with quiet.to_log(None if verbose else log_path):
        workers = runner.Workers(None, cfg)
        try:
            summary = lhotse_export.export(path, output, workers.map, cfg.run.batch_rows)
        except lhotse_export.ExportError as error:
            failure = str(error)
        finally:
            workers.close()
    if failure is not None:
        _fail(failure)
    typer.echo(f"{summary['cuts']:,} cuts in {summary['shards']} shards: {output}   "
               f"read them: lhotse.CutSet.from_shar(in_dir={str(output)!r})")
    if summary["left_out"]:
        typer.echo(f"left out: {summary['left_out']:,} rows whose id lhotse's Shar reader cannot match to its audio "
                   f"(e.g. {summary['example']!r})", err=True)
    if log_path.exists():
        typer.echo(f"log (Ray and the libraries; --verbose shows it here): {log_path}")


def main() -> None:
    # the deepspeed launcher passes --local_rank=N before the command; LOCAL_RANK says the same
    sys.argv = [argument for argument in sys.argv if not argument.startswith(("--local_rank=", "--local-rank="))]
    app()


if __name__ == "__main__":
    sys.exit(main())
