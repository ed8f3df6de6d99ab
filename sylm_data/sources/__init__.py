"""Source readers: unpack a published corpus layout into `source_record`s, one partition at a time.

A partition is the unit of work and of resume (one Emilia tar, one YODAS2 audio archive, one
manifest file). Readers never validate audio or text: ingest does, so every check has one home.
"""

from sylm_data.sources import emilia, lhotse, manifest, text, yodas2
from sylm_data.sources.base import Partition, Record, SourceError

READERS = {
    "emilia": emilia.EmiliaReader(yodas=False),
    "emilia-yodas": emilia.EmiliaReader(yodas=True),
    "yodas2": yodas2.Yodas2Reader(),
    "manifest": manifest.ManifestReader(),
    "lhotse": lhotse.LhotseReader(),
    "text": text.TextReader(),  # a text corpus, for synthesize (ingest needs audio)
}
AUDIO_SOURCES = ("emilia", "emilia-yodas", "yodas2", "manifest", "lhotse")

__all__ = ["AUDIO_SOURCES", "READERS", "Partition", "Record", "SourceError"]
