"""sylm-data train: continue pre-training a Hugging Face causal LM on interleaved shards.

One process per accelerator (torchrun / the deepspeed launcher set RANK, WORLD_SIZE, LOCAL_RANK;
without them this is a single process). The model's vocabulary gets the speech tokens
(`vocab.extend`), DeepSpeed wraps it (ZeRO stage, bf16, AdamW, the warmup-stable-decay schedule),
and every step reads micro-batches from the rank's loader. With `embed_only_steps`, a first phase
updates only the new embedding rows: every other gradient is zeroed and weight decay is off; the
optimizer state starts afresh when the full model begins to train.

OUTPUT/checkpoints/step-NNNNNNNN/ holds DeepSpeed's model, optimizer and schedule state plus each
rank's data position and RNG states; a rerun resumes from the latest one and goes on exactly as
an uninterrupted run would. OUTPUT/metrics.jsonl has the logged steps; OUTPUT/final/ the trained
model and extended tokenizer in Hugging Face format.
"""

import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sylm_data import offline
from sylm_data.checkpoints import from_pretrained_strict
from sylm_data.train import data, metrics, schedule, t2t
from sylm_data.train.config import TrainConfig
from sylm_data.train.vocab import extend

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"


class TrainError(RuntimeError):
    pass


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher, or a single process on a free local port."""
    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class Task:
    """What differs between training the LLM and the text-to-token model."""
    model: torch.nn.Module
    render: Callable[[dict], list[data.Document]]  # sample -> documents (picklable, for loader workers)
    pad_id: int  # the packer's padding: never a target, so any id serves
    first_new_row: int  # the embedding-only phase trains rows from here on
    save_extras: Callable[[Path, int], None]  # what OUTPUT/final needs beside the weights, given the step


def language_model_task(config: TrainConfig, unit_vocab: int) -> Task:
    """The causal LM and its tokenizer, extended with the speech vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_name = config.model.tokenizer or config.model.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, local_files_only=offline.local_only(tokenizer_name))
        model = from_pretrained_strict(AutoModelForCausalLM, config.model.name, dtype=torch.float32,
                                       attn_implementation=config.model.attention,
                                       local_files_only=offline.local_only(config.model.name))
    except (OSError, ValueError) as error:  # WeightsMismatch is a ValueError
        raise TrainError(f"cannot load model {config.model.name!r}: {offline.reason(error, config.model.name)}") from None
    vocab = extend(model, tokenizer, unit_vocab, config.model.pad_vocab_to)
    pad_id = next((token for token in (tokenizer.pad_token_id, tokenizer.eos_token_id) if token is not None), 0)
    return Task(model, partial(data.render, tokenizer=tokenizer, vocab=vocab), pad_id, vocab.speech_marker,
                lambda folder, step: tokenizer.save_pretrained(folder))


def text_to_token_task(config: TrainConfig, folders: list[data.ShardFolder], unit_vocab: int) -> Task:
    """A preset built with random weights, or a text-to-token model trained before (to go on with)."""
    if config.model.name in t2t.PRESETS:
        model = t2t.new_model(config.model.name, unit_vocab, max(config.data.seq_len, 4096))
    else:
        model, meta = t2t.load(config.model.name)
        if meta["unit_vocab"] != unit_vocab:
            raise TrainError(f"{config.model.name} writes {meta['unit_vocab']} units, the shards use {unit_vocab}")
    bounds = [folder.max_units_per_word for folder in folders if folder.max_units_per_word]
    if not bounds:
        raise TrainError("text-to-token shards come from the pairs stage (DIR/pairs-shards): their index.json "
                         "names max_units_per_word")
    tokenizer = next((folder.tokenizer for folder in folders if folder.tokenizer), "")
    name = Path(config.run.output).name
    return Task(model, t2t.render_pairs, t2t.PAD, t2t.FIRST_UNIT,
                lambda folder, step: t2t.save_meta(folder, unit_vocab, tokenizer, max(bounds), f"sylm-t2t/{name}@{step}"))


def _embeddings(model) -> list[torch.nn.Parameter]:
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not tables[0]:
        tables.append(output.weight)
    return tables


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices only: not on norms, biases or the embedding tables."""
    embedding_ids = {id(table) for table in _embeddings(model)}
    decayed, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 and id(parameter) not in embedding_ids else plain).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class EmbeddingOnly:
    """While installed, every gradient but those of the embedding rows from `first_new` on is zero."""

    def __init__(self, model, first_new: int) -> None:
        tables = {id(table) for table in _embeddings(model)}
        self.handles = []
        for parameter in model.parameters():
            if not parameter.requires_grad:
                continue
            if id(parameter) in tables:
                rows = torch.zeros(parameter.shape[0], 1, dtype=parameter.dtype, device=parameter.device)
                rows[first_new:] = 1
                self.handles.append(parameter.register_hook(partial(torch.mul, other=rows)))
            else:
                self.handles.append(parameter.register_hook(torch.zeros_like))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def packed_loss(model, batch: dict, device) -> torch.Tensor:
    """The mean loss over a batch's targets. Without a cache and an attention mask, transformers
    reads the restarting position ids as document boundaries and keeps attention inside each."""
    return model(input_ids=batch["input_ids"].to(device), labels=batch["labels"].to(device),
                 position_ids=batch["position_ids"].to(device), use_cache=False).loss


def _inner_optimizer(engine) -> torch.optim.Optimizer:
    optimizer = engine.optimizer
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _set_weight_decay(engine, weight_decay: float, embedding_phase: bool) -> None:
    for group, value in zip(engine.optimizer.param_groups, (weight_decay, 0.0)):
        group["weight_decay"] = 0.0 if embedding_phase else value


def deepspeed_config(config: TrainConfig, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": config.data.micro_batch,
        "gradient_accumulation_steps": config.optim.grad_accum,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": {"stage": config.optim.zero_stage, "overlap_comm": torch.cuda.is_available()},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # torch's AdamW, fused on GPU
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _checkpoint_to_resume(config: TrainConfig, folder: Path) -> Path | None:
    if config.run.resume == "never":
        return None
    if config.run.resume != "auto":
        chosen = Path(config.run.resume)
        if not (chosen.is_dir() and chosen.name.startswith(STEP_PREFIX)):
            raise TrainError(f"run.resume={config.run.resume!r} is not a checkpoint folder ({STEP_PREFIX}NNNNNNNN)")
        return chosen
    latest = folder / "latest"
    return folder / latest.read_text().strip() if latest.exists() else None


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopRequest:
    """SIGTERM / SIGINT (a preempted pod, Ctrl-C) ask for a checkpoint at the next step boundary,
    then an exit that says the run is unfinished."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = {}
        for number in (signal.SIGTERM, signal.SIGINT):
            self.previous[number] = signal.signal(number, self._handle)

    def _handle(self, number, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def train(config: TrainConfig, echo=print, progress_to=None) -> dict:
    """Train as `config` says; `echo` takes the lines for the user, `progress_to` the progress bar (default stderr)."""
    folders = [data.open_folder(path) for path in config.data.shards]
    unit_vocab = data.unit_vocabulary(folders, config.data.unit_vocab)
    rank, world, local_rank = distributed_env()
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    output = Path(config.run.output)
    checkpoints = output / CHECKPOINTS

    random.seed(config.run.seed)
    np.random.seed(config.run.seed)
    torch.manual_seed(config.run.seed)
    task = (text_to_token_task(config, folders, unit_vocab) if config.model.task == "t2t"
            else language_model_task(config, unit_vocab))
    model = task.model
    model.config.use_cache = False
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    flops = metrics.flops_per_token(model, config.data.seq_len)
    bf16 = config.optim.precision == "bf16" or (config.optim.precision == "auto" and cuda)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.optim.weight_decay), lr=config.optim.lr,
                                  betas=tuple(config.optim.betas), eps=config.optim.eps, fused=cuda or None)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(config, bf16),
        lr_scheduler=lambda wrapped: torch.optim.lr_scheduler.LambdaLR(wrapped, partial(schedule.factor, optim=config.optim)))

    step, saved_position = 0, None
    resume_from = _checkpoint_to_resume(config, checkpoints)
    if resume_from is not None:
        loaded, _ = engine.load_checkpoint(str(resume_from.parent), tag=resume_from.name)
        if loaded is None:
            raise TrainError(f"cannot load checkpoint {resume_from}")
        state = torch.load(resume_from / f"trainer-rank{rank}.pt", weights_only=False)
        step, saved_position = state["step"], state["data"]
        _restore_rng(state["rng"])
        if rank == 0:
            echo(f"resumed from {resume_from} at step {step}")
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train-config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))

    plan = data.Plan(tuple(folders), tuple(data.mixing_weights(folders, config.data.weights)),
                     task.render, unit_vocab,
                     config.data.seq_len, config.data.micro_batch, config.data.shuffle_block, config.run.seed, task.pad_id)
    position = data.DataPosition(rank, world, config.data.workers, saved_position)
    batches = iter(position.loader(plan, pin_memory=cuda))

    embedding_only = None
    if step < config.optim.embed_only_steps:
        embedding_only = EmbeddingOnly(engine.module, task.first_new_row)
    _set_weight_decay(engine, config.optim.weight_decay, embedding_only is not None)

    log = metrics.MetricsLog(output, config.run.tensorboard, after_step=step) if rank == 0 else None
    peak = metrics.peak_flops(config.run.peak_tflops)
    tokens_per_step = config.data.micro_batch * config.data.seq_len * config.optim.grad_accum * world
    progress = _progress_bar(config, rank, step, progress_to)
    stop = _StopRequest()
    window_start, window_steps, last_loss = time.perf_counter(), 0, float("nan")
    outcome = "finished"
    try:
        while step < config.total_steps:
            if embedding_only is not None and step >= config.optim.embed_only_steps:
                embedding_only.remove()
                embedding_only = None
                _inner_optimizer(engine).state.clear()  # the full model starts with fresh moments
                _set_weight_decay(engine, config.optim.weight_decay, False)
            loss_sum, lr = torch.zeros((), device=engine.device), scheduler.get_last_lr()[0]
            for _ in range(config.optim.grad_accum):
                batch = next(batches)
                position.update(batch)
                loss = packed_loss(engine, batch, engine.device)
                engine.backward(loss)
                engine.step()
                loss_sum += loss.detach().float()
            step += 1
            window_steps += 1
            # on the device: NCCL reduces only GPU tensors, and the loss is read once per step;
            # float64 keeps the token counts exact
            packing = position.packing()
            counts = torch.tensor([position.skipped(), *packing.values(), stop.requested], dtype=torch.float64,
                                  device=engine.device)
            shared = torch.cat([(loss_sum / config.optim.grad_accum).double().view(1), counts])
            torch.distributed.all_reduce(shared)
            shared = shared.tolist()
            last_loss = shared[0] / world
            if step % config.run.log_every == 0 or step == config.total_steps:
                elapsed = time.perf_counter() - window_start
                tokens_per_s = tokens_per_step * window_steps / elapsed
                values = {"loss": last_loss, "lr": lr, "tokens": step * tokens_per_step,
                          "tokens_per_s": round(tokens_per_s, 1), "skipped_samples": int(shared[1]),
                          **{name: int(total) for name, total in zip(packing, shared[2:-1])},
                          "phase": "embeddings" if embedding_only is not None else "full"}
                if peak:
                    values["mfu"] = round(flops * tokens_per_s / (peak * world), 4)
                if log is not None:
                    log.write(step, values)
                window_start, window_steps = time.perf_counter(), 0
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}")
            interrupted = shared[-1] > 0  # a signal on any rank
            stopping = interrupted or step == config.run.stop_at
            if stopping or step % config.run.save_every == 0 or step == config.total_steps:
                save_checkpoint(engine, checkpoints, step, rank, position, config.run.keep_checkpoints)
            if stopping and step < config.total_steps:
                outcome = "interrupted" if interrupted else "stopped"
                break
    finally:
        stop.restore()
        if progress is not None:
            progress.close()
        if log is not None:
            log.close()
    if outcome == "finished":
        export(engine, task, output / "final", config.optim.zero_stage, rank, step)
    torch.distributed.barrier()
    return {"rank": rank, "outcome": outcome, "step": step, "loss": last_loss, "output": str(output)}


def _progress_bar(config: TrainConfig, rank: int, step: int, file=None):
    if rank != 0 or not config.run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.total_steps, initial=step, unit="step", dynamic_ncols=True, file=file)


def save_checkpoint(engine, folder: Path, step: int, rank: int, position: data.DataPosition, keep: int) -> None:
    """Each rank's own state first, then DeepSpeed's (which names the checkpoint `latest` last)."""
    tag = f"{STEP_PREFIX}{step:08d}"
    (folder / tag).mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "data": position.to_dict(), "rng": _rng_state()}, folder / tag / f"trainer-rank{rank}.pt")
    engine.save_checkpoint(str(folder), tag=tag)
    torch.distributed.barrier()
    if rank == 0 and keep > 0:
        for old in sorted(folder.glob(f"{STEP_PREFIX}*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def export(engine, task: Task, folder: Path, zero_stage: int, rank: int, step: int) -> None:
    """The trained model, loadable with from_pretrained, with its extended tokenizer (or t2t.json)."""
    state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    if rank == 0:
        engine.module.save_pretrained(folder, state_dict=state)
        task.save_extras(folder, step)

