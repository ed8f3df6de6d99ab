"""The run config: a TOML file of sections (`[run]`, one per stage), overridden by `--set`.

    [run]
    stages = ["ingest"]
    [ingest]
    source = "emilia"
    min_duration_ms = 500

`--set ingest.min_duration_ms=800` overrides one key; the value is read as TOML (numbers, lists,
booleans), and as a plain string when it does not parse.
"""

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from sylm_data.pipeline import registry


class ConfigError(ValueError):
    pass


@dataclass
class RunConfig:
    stages: list[str] = field(default_factory=lambda: list(registry.MAIN_LINE))
    seed: int = 0
    batch_rows: int = 64  # records per in-flight block: audio bytes make rows large
    # records per batch read from a stage's output that holds no audio (a run that starts at
    # interleave or pairs): small reads there cost more in overhead than in work
    batch_rows_without_audio: int = 4096
    num_cpus: int | None = None  # embedded Ray only; None = all cores


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    stages: dict[str, object] = field(
        default_factory=lambda: {name: stage.config_type() for name, stage in registry.STAGES.items()}
    )

    def to_dict(self) -> dict:
        return {"run": dataclasses.asdict(self.run)} | {
            name: dataclasses.asdict(section) for name, section in self.stages.items()
        }

    def stage_hashes(self, names: list[str], upstream: str | None = None) -> dict[str, str]:
        """Each stage's fingerprint of what decides its rows: its section and the fingerprint of the
        rows it reads, that of the stage before it or, for the first, `upstream` (the hash recorded in
        the folder it reads; None when it reads the sources). Chained so, a stage run on its own over
        a folder gets the hash it had when run fused with the stages that wrote that folder.

        Inputs and root are left out (the partitions record them) and so is each section's
        `SPEED_ONLY` (workers, actors, batch sizes), so a resumed run may scale. A section's
        `ROWS_VERSION`, where it has one, goes in: it changes when the same settings start to make
        different rows, so old and new rows are never mixed."""
        hashes, previous = {}, upstream
        for name in names:
            section = self.stages[name]
            left_out = {"inputs", "root", *getattr(section, "SPEED_ONLY", ())}
            relevant = {key: value for key, value in dataclasses.asdict(section).items() if key not in left_out}
            if hasattr(section, "ROWS_VERSION"):
                relevant["rows_version"] = section.ROWS_VERSION
            chained = {name: relevant, "seed": self.run.seed} | ({"upstream": previous} if previous else {})
            previous = hashes[name] = hashlib.sha256(json.dumps(chained, sort_keys=True).encode()).hexdigest()[:16]
        return hashes

    def stage_hash(self, names: list[str], upstream: str | None = None) -> str:
        """The fingerprint of the last of `names` (see `stage_hashes`)."""
        return self.stage_hashes(names, upstream)[names[-1]]


def _runtime_types(annotation) -> tuple[type, ...]:
    """int | None -> (int, NoneType); list[str] -> (list,)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return tuple(typing.get_origin(arg) or arg for arg in (typing.get_args(annotation) if union else (annotation,)))


def _set_field(section, key: str, value, where: str) -> None:
    known = {f.name for f in dataclasses.fields(section)}
    if key not in known:
        raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(known))}")
    allowed = _runtime_types(typing.get_type_hints(type(section))[key])
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ConfigError(f"{where}: {key} must be {' or '.join(t.__name__ for t in allowed)}, got {value!r}")
    setattr(section, key, value)


def parse_value(text: str):
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def load_sections(sections: dict[str, object], path: str | Path | None, overrides: list[str], example: str) -> None:
    """Set the fields of the dataclass `sections` (by section name) from a TOML file, then from
    SECTION.KEY=VALUE overrides; unknown sections and keys and mistyped values are refused."""

    def apply(section_name: str, values: dict, where: str) -> None:
        if section_name not in sections:
            raise ConfigError(f"{where}: unknown section [{section_name}]; sections: {', '.join(sections)}")
        for key, value in values.items():
            _set_field(sections[section_name], key, value, f"{where} [{section_name}]")

    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from None
        for section_name, values in document.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: top-level key {section_name!r} must be a [section]")
            apply(section_name, values, str(path))
    for override in overrides:
        dotted, separator, text = override.partition("=")
        section_name, dot, key = dotted.strip().partition(".")
        if not separator or not dot:
            raise ConfigError(f"--set {override!r}: expected SECTION.KEY=VALUE, e.g. {example}")
        apply(section_name, {key: parse_value(text.strip())}, "--set")


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    config = Config()
    load_sections({"run": config.run, **config.stages}, path, list(overrides), "ingest.min_duration_ms=500")
    if min(config.run.batch_rows, config.run.batch_rows_without_audio) < 1:
        raise ConfigError(f"run.batch_rows and run.batch_rows_without_audio must be at least 1, got "
                          f"{config.run.batch_rows} and {config.run.batch_rows_without_audio}")
    return config
