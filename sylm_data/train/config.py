"""The trainer's config: a TOML file of sections `[model]`, `[data]`, `[optim]`, `[run]`, overridden
by `--set SECTION.KEY=VALUE` exactly as the pipeline's config is.

    [model]
    name = "Qwen/Qwen2.5-0.5B"      # task = "t2t" trains a text-to-token model instead
    [data]
    shards = ["out/shards", "text/shards"]
    weights = [0.8, 0.2]
    [optim]
    steps = 20000
    [run]
    output = "runs/qwen-0.5b"
"""

from dataclasses import dataclass, field
from pathlib import Path

from sylm_data.pipeline.config import ConfigError, load_sections


TASKS = ("lm", "t2t")
DEFAULT_MODELS = {"lm": "Qwen/Qwen2.5-0.5B", "t2t": "t2t-base"}


@dataclass
class ModelConfig:
    task: str = "lm"  # lm: the LLM on interleaved shards | t2t: a text-to-token model on pairs shards
    # lm: hub id or folder of a causal LM; t2t: a preset (t2t-tiny, t2t-small, t2t-base) or a t2t folder;
    # empty: Qwen/Qwen2.5-0.5B or t2t-base
    name: str = ""
    tokenizer: str = ""  # default: the model's own
    attention: str = "sdpa"  # transformers attn_implementation; flash_attention_2 where installed
    gradient_checkpointing: bool = False
    pad_vocab_to: int = 64  # embedding rows are rounded up to a multiple of this


@dataclass
class DataConfig:
    shards: list[str] = field(default_factory=list)  # shard folders (DIR/shards), each with its index.json
    weights: list[float] = field(default_factory=list)  # mixing weight per folder; empty: by sample count
    unit_vocab: int = 0  # unit ids the speech segments use; 0: from the shards' index.json
    seq_len: int = 2048
    micro_batch: int = 8  # sequences per rank per forward pass
    workers: int = 2  # dataloader processes per rank; 0 reads in the training process
    shuffle_block: int = 10_000  # samples shuffled together (after the shard order is shuffled)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    warmup_steps: int = 1000
    steps: int = 10_000  # optimizer steps of the full-model phase
    decay_share: float = 0.1  # the last share of `steps` decays the learning rate (warmup-stable-decay)
    decay_shape: str = "1-sqrt"  # 1-sqrt | linear | cosine
    weight_decay: float = 0.1  # matrices only; not norms, biases or embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    grad_accum: int = 1
    zero_stage: int = 2
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    embed_only_steps: int = 0  # first phase: only the new embedding rows train, at lr after its own warmup


@dataclass
class RunConfig:
    output: str = "train-out"
    seed: int = 0
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto: from OUTPUT/checkpoints when there is one | never | a checkpoint folder
    stop_at: int = 0  # stop (with a checkpoint) once this many steps are done; 0: run to the end
    tensorboard: bool = False
    progress: bool = True
    peak_tflops: float = 0.0  # the accelerator's dense bf16 peak for MFU; 0: looked up from the GPU's name


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def total_steps(self) -> int:
        return self.optim.embed_only_steps + self.optim.steps


DECAY_SHAPES = ("1-sqrt", "linear", "cosine")


def check(config: TrainConfig) -> None:
    data, optim = config.data, config.optim
    if not data.shards:
        raise ConfigError("data.shards names no shard folder")
    if data.weights and (len(data.weights) != len(data.shards) or min(data.weights) < 0 or not sum(data.weights)):
        raise ConfigError(f"data.weights needs one non-negative weight per folder ({len(data.shards)}), got {data.weights}")
    for name in ("seq_len", "micro_batch", "shuffle_block"):
        if getattr(data, name) < 1:
            raise ConfigError(f"data.{name} must be at least 1")
    if optim.decay_shape not in DECAY_SHAPES:
        raise ConfigError(f"optim.decay_shape must be one of {', '.join(DECAY_SHAPES)}, not {optim.decay_shape!r}")
    if not 0 <= optim.decay_share <= 1 or optim.steps < 1 or optim.grad_accum < 1 or optim.warmup_steps < 0:
        raise ConfigError("optim needs steps >= 1, grad_accum >= 1, warmup_steps >= 0 and decay_share within 0..1")
    if optim.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"optim.zero_stage must be 0..3, not {optim.zero_stage}")
    if config.model.task not in TASKS:
        raise ConfigError(f"model.task must be one of {', '.join(TASKS)}, not {config.model.task!r}")
    if config.model.task == "t2t" and optim.embed_only_steps:
        raise ConfigError("optim.embed_only_steps is for extending an LLM; a text-to-token model trains whole")
    if optim.zero_stage == 3 and optim.embed_only_steps:
        raise ConfigError("optim.embed_only_steps masks whole embedding tables: use zero_stage 0..2 with it")
    if optim.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"optim.precision must be auto, bf16 or fp32, not {optim.precision!r}")
    if len(optim.betas) != 2:
        raise ConfigError(f"optim.betas needs two values, got {optim.betas}")


def load(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    config = TrainConfig()
    sections = {"model": config.model, "data": config.data, "optim": config.optim, "run": config.run}
    load_sections(sections, path, list(overrides), "optim.lr=1e-4")
    check(config)
    config.model.name = config.model.name or DEFAULT_MODELS[config.model.task]
    return config
