"""The codebook: `DIR/codebook/codebook.safetensors` (centroids, optional agglomerative map) and
`manifest.json` naming what the centroids are centroids of; plus the `segment_features` rows the
codebook stage samples from a corpus before it fits.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from sylm_data.schemas.tokenized import tokenizer_id

NAME = "segment_features"
VERSION = 1

ID = "id"
SOURCE = "source"
SEGMENTS = "segments"
DIMS = "dims"
FEATURES = "features"  # segments × dims, row-major

SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(SEGMENTS, pa.int32(), nullable=False),
        pa.field(DIMS, pa.int32(), nullable=False),
        pa.field(FEATURES, pa.large_list(pa.float32()), nullable=False),
    ],
    metadata={"sylm.contract": NAME, "sylm.version": str(VERSION)},
)

WEIGHTS = "codebook.safetensors"
MANIFEST = "manifest.json"


@dataclass
class CodebookManifest:
    encoder: str
    layer: int
    dims: int
    clusters: int
    units: int  # after the agglomerative map; equals clusters without one
    samples: int
    inertia: float
    segmentation: dict  # the parameters the pooled features were made with
    config_hash: str

    @property
    def id(self) -> str:
        return tokenizer_id(self.encoder, self.layer, self.clusters, self.units, self.config_hash)

    def save(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=1, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> "CodebookManifest":
        return cls(**json.loads((Path(folder) / MANIFEST).read_text()))
