"""tokenize: `aligned` rows -> `tokenized` rows, syllable units with their spans.

Audio -> encoder frames (50 Hz) -> exact min-cut segmentation (~`sec_per_syllable` per segment,
`min_frames`..`max_frames` frames each) -> merge of similar neighbours -> mean-pooled segments ->
nearest codebook centroid (-> agglomerative map, when the codebook has one) -> runs of one unit
merged. The codebook must have been fitted on the same encoder, layer and segmentation; the
`sylreg` encoder brings its released codebook (24,576 centroids mapped to 8,192 units), used when
no `codebook` folder is set.
"""

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from sylm_data.pipeline.stage import Rejected, Stage, StageConfigError
from sylm_data.schemas import codebook, stream, tokenized, utterance
from sylm_data.schemas.codebook import CodebookManifest
from sylm_data.units.features import FeatureConfig, actor_pool, check_encoder, encoder_identity

NAME = "tokenize"


@dataclass
class TokenizeConfig(FeatureConfig):
    codebook: str = ""  # a folder written by the codebook stage (DIR/codebook); sylreg: empty = its own


def uses_released_codebook(config: TokenizeConfig) -> bool:
    return config.encoder == "sylreg" and not config.codebook


def check_codebook(config: TokenizeConfig) -> CodebookManifest:
    """The codebook's manifest, refused unless it was fitted on this config's encoder, layer and segmentation."""
    folder = Path(config.codebook)
    if not config.codebook or not (folder / codebook.MANIFEST).exists():
        raise StageConfigError(f"no codebook at {config.codebook!r}: run --stage codebook, then set tokenize.codebook=DIR/codebook")
    manifest = CodebookManifest.load(folder)
    wanted = encoder_identity(config)
    if (manifest.encoder, manifest.layer) != wanted:
        raise StageConfigError(f"codebook {folder} was fitted on {manifest.encoder} layer {manifest.layer}, "
                               f"not {wanted[0]} layer {wanted[1]}")
    if manifest.segmentation != config.segmentation():
        raise StageConfigError(f"codebook {folder} was fitted with segmentation {manifest.segmentation}, "
                               f"not {config.segmentation()}")
    return manifest


def preflight(config: TokenizeConfig) -> None:
    if not uses_released_codebook(config):
        check_codebook(config)  # first: a mismatched codebook says more than a missing encoder
    check_encoder(config)


def load_codebook(config: TokenizeConfig) -> tuple:
    """(manifest, centroids, mapping or None) of the configured codebook folder."""
    from safetensors.torch import load_file

    manifest = check_codebook(config)
    weights = load_file(str(Path(config.codebook) / codebook.WEIGHTS))
    return manifest, weights["centroids"], weights.get("mapping")


_PAYLOAD = [name for name in tokenized.SCHEMA.names if name not in (utterance.ID, utterance.SOURCE)]
OUTPUT_SCHEMA = stream.in_flight(tokenized.SCHEMA)


class Tokenizer:
    """Built on the workers: the encoders and torch are imported here, not when the stage is listed."""

    def __init__(self, config: TokenizeConfig) -> None:
        from sylm_data.units import syllables

        self.segmenter = syllables.Segmenter(config)
        if uses_released_codebook(config):
            encoder = self.segmenter.encoder
            self.centroids, self.mapping, self.id = encoder.centroids, encoder.mapping, encoder.codebook_id
        else:
            manifest, self.centroids, self.mapping = load_codebook(config)
            self.id = manifest.id

    def __call__(self, batch: pa.Table) -> pa.Table:
        from sylm_data.units import assign
        from sylm_data.units.encoders import FRAME_MS
        from sylm_data.units.syllables import decode_16k

        rows = batch.to_pylist()
        todo, waves = [], []
        for row in rows:
            row.update(dict.fromkeys([tokenized.UNITS, tokenized.UNIT_START_MS, tokenized.UNIT_END_MS, tokenized.TOKENIZER]))
            if row[stream.REJECT_REASON] is None:
                try:
                    waves.append(decode_16k(row[utterance.AUDIO]))
                    todo.append(row)
                except Rejected as rejected:
                    stream.mark_rejected(row, _PAYLOAD, NAME, rejected.reason, rejected.detail)
        for row, (features, ends) in zip(todo, self.segmenter(waves)):
            pooled = self.segmenter.pool(features, ends)
            names = assign.assign(pooled.to(self.centroids.device), self.centroids, self.mapping)
            unit_ids, starts, stops = assign.deduplicate(names, ends, FRAME_MS)
            duration = row[utterance.DURATION_MS]
            row.update({tokenized.UNITS: unit_ids, tokenized.UNIT_START_MS: [min(s, duration) for s in starts],
                        tokenized.UNIT_END_MS: [min(e, duration) for e in stops], tokenized.TOKENIZER: self.id})
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


STAGE = Stage(
    name=NAME,
    consumes="align",
    contract=tokenized.SCHEMA,
    description="aligned rows -> tokenized rows (syllable units with start/end ms; SylReg's codebook or DIR/codebook)",
    config_type=TokenizeConfig,
    make_transform=Tokenizer,
    map_options=actor_pool,
    preflight=preflight,
    needs_audio=True,
)
