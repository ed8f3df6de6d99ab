"""What a syllable-feature config says: the encoder, its layer and the segmentation settings that a
codebook is only valid for, and the driver-side checks of it. Imports no torch (the encoders are
imported where they are needed), so that the stage list and a run's config load without it."""

import functools
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

from sylm_data import offline
from sylm_data.pipeline.stage import MapOptions, StageConfigError, model_actors, resolve_device


@dataclass
class FeatureConfig:
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "actors", "gpus_per_actor")
    encoder: str = "sylreg"  # sylreg | hf | mfcc
    model: str = ""  # sylreg: a SylReg checkpoint (default ryota-komatsu/SylReg-Distill); hf: a transformers id or folder
    layer: int | None = None  # hidden-state index; default: sylreg 6, hf 9 (0 = the CNN features' projection)
    device: str = "auto"
    sec_per_syllable: float = 0.15
    min_frames: int = 3
    max_frames: int = 35
    merge_threshold: float | None = None  # merge neighbours at least this cosine-similar; default: sylreg 0.95, else 0.3
    dtype: str = "auto"  # sylreg encoder: auto = the checkpoint's (float32, as its units were made); bfloat16 changes units
    dp_dtype: str = "float64"  # segmentation costs: float64 finds the exact minimum cut; float32 drifts on clips >= 10 s
    batch_size: int = 16  # utterances per encoder / DP batch
    actors: int = 1  # encoder processes; one per GPU on a GPU cluster
    gpus_per_actor: float = 1.0  # used when the device resolves to cuda

    def resolved(self) -> "FeatureConfig":
        """This config with the encoder's defaults filled in; unknown encoders are refused."""
        if self.encoder not in ENCODERS:
            raise StageConfigError(f"unknown encoder {self.encoder!r}: use {', '.join(ENCODERS)}")
        defaults = encoder_defaults(self.encoder)
        if self.encoder == "hf" and not self.model:
            raise StageConfigError("encoder hf needs a model: a transformers HuBERT / wav2vec2 / data2vec-audio id or folder")
        if self.dtype not in SYLREG_DTYPES or (self.dtype != "auto" and self.encoder != "sylreg"):
            raise StageConfigError(f"dtype {self.dtype!r}: the sylreg encoder takes {', '.join(SYLREG_DTYPES)}; "
                                   "other encoders take auto")
        if self.dp_dtype not in DP_DTYPES:
            raise StageConfigError(f"unknown dp_dtype {self.dp_dtype!r}: use {' or '.join(DP_DTYPES)}")
        return replace(self, model=self.model or defaults["model"],
                       layer=defaults["layer"] if self.layer is None or self.encoder == "mfcc" else self.layer,
                       merge_threshold=defaults["merge_threshold"] if self.merge_threshold is None else self.merge_threshold)

    def segmentation(self) -> dict:
        """What decides the segments and the vectors named besides the encoder: a codebook is only valid for the same."""
        resolved = self.resolved()
        defaults = encoder_defaults(self.encoder)
        keys = ("sec_per_syllable", "min_frames", "max_frames", "merge_threshold")
        # `standardize` only where set, so that codebooks fitted on plain means before it existed still match
        return {key: value for key, value in asdict(resolved).items() if key in keys} | {
            "affinity": defaults["affinity"], "keep": defaults["keep"]} | (
            {"standardize": True} if defaults["standardize"] else {})


ENCODERS = ("sylreg", "hf", "mfcc")
SYLREG_DTYPES = ("auto", "float32", "bfloat16")
DP_DTYPES = ("float64", "float32")


@functools.cache
def encoder_defaults(encoder: str) -> dict:
    """SylReg's settings are the release's (sylreg.py); the others are this project's, tuned on the
    espeak-ng sample."""
    from sylm_data.units import segmentation, sylreg

    if encoder == "sylreg":
        return {"model": sylreg.HUB_ID, "layer": sylreg.LAYER, "merge_threshold": sylreg.MERGE_THRESHOLD,
                "affinity": segmentation.SHIFTED_DOT, "keep": sylreg.KEEP_SEGMENTS, "standardize": True}
    return {"model": "", "layer": 9 if encoder == "hf" else 0, "merge_threshold": 0.3, "affinity": segmentation.COSINE,
            "keep": 1, "standardize": False}


def encoder_identity(config: FeatureConfig) -> tuple[str, int]:
    """What a codebook is a codebook of: (encoder id, layer); the MFCC front end has one layer."""
    resolved = config.resolved()
    return ("mfcc", 0) if resolved.encoder == "mfcc" else (f"{resolved.encoder}/{resolved.model}", resolved.layer)


def actor_pool(config: FeatureConfig) -> MapOptions:
    """An actor pool of encoders, each on a GPU when the device is CUDA."""
    return model_actors(resolve_device(config.device) == "cuda", config.actors, config.gpus_per_actor,
                        max(config.batch_size * 2, 16))


def check_encoder(config: FeatureConfig) -> None:
    """Driver-side check that the encoder can be built, reading its config but no weights."""
    config = config.resolved()
    if config.encoder == "mfcc":
        return
    if config.encoder == "sylreg":
        from sylm_data.units import sylreg

        try:
            layers = sylreg.layer_count(sylreg.read_config(config.model))
        except sylreg.CheckpointError as error:
            raise StageConfigError(f"cannot load encoder {config.model!r}: {error}") from None
        if not 0 <= config.layer < layers:
            raise StageConfigError(f"{config.model} has layers 0..{layers - 1}, not {config.layer}")
        return
    from transformers import AutoConfig

    try:
        layers = AutoConfig.from_pretrained(config.model, local_files_only=offline.local_only(config.model)).num_hidden_layers
    except (OSError, ValueError) as error:
        raise StageConfigError(f"cannot load encoder {config.model!r}: {offline.reason(error, config.model)}") from None
    if not 0 <= config.layer <= layers:
        raise StageConfigError(f"{config.model} has layers 0..{layers}, not {config.layer}")
