"""codebook: fit the k-means codebook that tokenize names segments with.

The sample is chosen before anything is encoded: an utterance is encoded only when a hash of its
id falls within a share set from the input's row count, so that about `oversample` × `max_segments`
segments come out; the others pass with no segments. A chosen utterance goes through the same
encoder and segmentation as tokenize, and up to `segments_per_utterance` of its pooled segment
features are kept (`DIR/codebook/<partition>/`, a deterministic choice per id). When every
partition is in, the driver fits k-means (k-means++ then Lloyd, in torch, on the GPU when
present) on at most `max_segments` of them (reading only the sample) and writes
`DIR/codebook/codebook.safetensors` with a manifest naming encoder, layer, K, sample count and inertia;
with `agglomerate_to`, also a map from the K centroids to fewer units by Ward linkage.
"""

import hashlib
import os
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.pipeline.output import read_rows
from sylm_data.pipeline.stage import Rejected, Stage, resolve_device
from sylm_data.schemas import codebook, stream, utterance
from sylm_data.schemas.codebook import CodebookManifest
from sylm_data.units.features import FeatureConfig, actor_pool, check_encoder, encoder_identity

NAME = "codebook"


@dataclass
class CodebookConfig(FeatureConfig):
    clusters: int = 256
    segments_per_utterance: int = 64
    max_segments: int = 200_000
    iterations: int = 50
    seed: int = 0
    agglomerate_to: int = 0  # reduce the clusters to this many units by Ward linkage; 0 keeps them all
    oversample: float = 2.0  # utterances chosen for about this many times max_segments segments
    utterance_share: float = 0.0  # the share of utterances encoded; 0: set from the input's size (`choose_share`)


def choose_share(config: CodebookConfig, input_rows: int) -> CodebookConfig:
    """Unless set, the share of utterances to encode for about `oversample` × `max_segments`
    segments, assuming each gives `segments_per_utterance` (short ones give fewer: `oversample`)."""
    if config.utterance_share:
        return config
    wanted = config.oversample * config.max_segments / max(config.segments_per_utterance, 1)
    return replace(config, utterance_share=min(1.0, wanted / input_rows) if input_rows else 1.0)


def id_fraction(sample_id: str) -> float:
    """A sample id's place in [0, 1): the same on every worker and run."""
    return int(hashlib.sha1(sample_id.encode()).hexdigest()[:13], 16) / 16**13


_PAYLOAD = [codebook.SEGMENTS, codebook.DIMS, codebook.FEATURES]
OUTPUT_SCHEMA = stream.in_flight(codebook.SCHEMA)


class SegmentSampler:
    """Rows with audio -> a sample of their pooled segment features."""

    def __init__(self, config: CodebookConfig) -> None:
        from sylm_data.units import syllables  # torch and the encoders: on the workers, not when the stage is listed

        self.config = config
        self.segmenter = syllables.Segmenter(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from sylm_data.units.syllables import decode_16k

        envelope = [utterance.ID, utterance.SOURCE, *stream.ENVELOPE_NAMES]
        rows = [{name: row[name] for name in envelope} | dict.fromkeys(_PAYLOAD) for row in batch.select(envelope).to_pylist()]
        features = [np.zeros(0, np.float32)] * len(rows)
        todo, waves = [], []
        for index, row in enumerate(rows):
            if row[stream.REJECT_REASON] is not None:
                continue
            row.update({codebook.SEGMENTS: 0, codebook.DIMS: 0})
            if id_fraction(row[utterance.ID]) >= self.config.utterance_share:
                continue  # not in the sample: never decoded nor encoded
            try:
                waves.append(decode_16k(batch[utterance.AUDIO][index].as_py()))
                todo.append(index)
            except Rejected as rejected:
                stream.mark_rejected(row, _PAYLOAD, NAME, rejected.reason, rejected.detail)
        for index, (segment_features, ends) in zip(todo, self.segmenter(waves)):
            pooled = self.segmenter.pool(segment_features, ends).numpy()
            rng = np.random.default_rng(int(hashlib.sha1(rows[index][utterance.ID].encode()).hexdigest()[:8], 16))
            keep = np.sort(rng.permutation(len(pooled))[: self.config.segments_per_utterance])
            rows[index].update({codebook.SEGMENTS: len(keep), codebook.DIMS: pooled.shape[1]})
            features[index] = pooled[keep].astype(np.float32).ravel()
        offsets = np.cumsum([0] + [len(f) for f in features], dtype=np.int64)
        listed = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(features), pa.float32()),
                                               mask=pa.array([row[codebook.SEGMENTS] is None for row in rows]))
        without = pa.schema([field for field in OUTPUT_SCHEMA if field.name != codebook.FEATURES])
        table = pa.Table.from_pylist(rows, schema=without).append_column(OUTPUT_SCHEMA.field(codebook.FEATURES), listed)
        return table.select(OUTPUT_SCHEMA.names)


def fit(config: CodebookConfig, folder, parallel) -> dict:
    """Fit the codebook on the sampled segment features under `folder` (on the driver: the sample is
    small; `parallel` is not needed); returns the manifest as a dict."""
    import torch
    from safetensors.torch import save_file

    from sylm_data.units.agglomerate import ward_map
    from sylm_data.units.kmeans import kmeans, nearest

    table = read_rows(folder, columns=[codebook.ID, codebook.SEGMENTS, codebook.DIMS, codebook.FEATURES])
    if not table.num_rows:
        raise ValueError(f"{folder} holds no segment features: nothing to fit")
    table = table.filter(pc.greater(table[codebook.SEGMENTS], 0)).sort_by(codebook.ID)
    if not table.num_rows:
        raise ValueError(f"{folder} holds no segment features: nothing to fit")
    dims = table[codebook.DIMS][0].as_py()
    points = np.array(pc.list_flatten(table[codebook.FEATURES]), np.float32).reshape(-1, dims)
    rng = np.random.default_rng(config.seed)
    if len(points) > config.max_segments:
        points = points[np.sort(rng.choice(len(points), config.max_segments, replace=False))]
    device = resolve_device(config.device)
    points_on_device = torch.from_numpy(np.require(points, requirements="W")).to(device)  # Arrow's memory is read-only
    centroids, inertia = kmeans(points_on_device, config.clusters, config.iterations, config.seed)
    weights = {"centroids": centroids.float().cpu().contiguous()}
    if config.agglomerate_to:
        sizes = torch.bincount(nearest(points_on_device, centroids), minlength=config.clusters).clamp_min(1)
        weights["mapping"] = ward_map(centroids, sizes, config.agglomerate_to).cpu()
    encoder, layer = encoder_identity(config)
    config_hash = hashlib.sha256(repr((encoder, layer, config.segmentation(), config.clusters, config.seed,
                                       config.agglomerate_to, len(points))).encode()).hexdigest()[:12]
    manifest = CodebookManifest(encoder=encoder, layer=layer, dims=dims, clusters=config.clusters,
                                units=config.agglomerate_to or config.clusters, samples=len(points), inertia=inertia,
                                segmentation=config.segmentation(), config_hash=config_hash)
    temporary = folder / f".{codebook.WEIGHTS}.partial"
    save_file(weights, str(temporary))
    os.replace(temporary, folder / codebook.WEIGHTS)
    manifest.save(folder)
    return {"codebook": manifest.id, "samples": manifest.samples, "inertia": round(inertia, 4)}


STAGE = Stage(
    name=NAME,
    consumes="align",
    contract=codebook.SCHEMA,
    description="aligned rows -> sampled segment features, then the k-means codebook (DIR/codebook/)",
    config_type=CodebookConfig,
    make_transform=SegmentSampler,
    map_options=actor_pool,
    preflight=check_encoder,
    needs_audio=True,
    finalize=fit,
    prepare=choose_share,
)
