"""The codebook encodes only the utterances its sample needs, chosen by id before any decoding."""

import pyarrow as pa
import pyarrow.compute as pc

from sylm_data.pipeline.partitions import read_source_partition
from sylm_data.sample import MANIFEST
from sylm_data.schemas import codebook as codebook_schema
from sylm_data.schemas import stream
from sylm_data.sources import READERS
from sylm_data.stages import codebook, ingest


def ingested() -> pa.Table:
    partition = READERS["manifest"].partitions([str(MANIFEST)])[0]
    return pa.concat_tables([ingest.transform(b, ingest.IngestConfig()) for b in read_source_partition(partition, "ingest", 64)])


def test_the_share_follows_the_input_size_unless_set():
    config = codebook.CodebookConfig(max_segments=1000, segments_per_utterance=10, oversample=2.0)
    assert codebook.choose_share(config, 1000).utterance_share == 0.2
    assert codebook.choose_share(config, 100).utterance_share == 1.0
    assert codebook.choose_share(config, 0).utterance_share == 1.0  # size unknown: all
    assert codebook.choose_share(codebook.CodebookConfig(utterance_share=0.5), 10**9).utterance_share == 0.5


def test_only_chosen_utterances_are_encoded_and_their_features_are_kept():
    rows = ingested()
    rows = rows.set_column(rows.schema.get_field_index(stream.REJECT_REASON), stream.REJECT_REASON,
                           pa.array(["too_short"] + [None] * (rows.num_rows - 1)))
    rows = rows.set_column(rows.schema.get_field_index(stream.REJECT_STAGE), stream.REJECT_STAGE,
                           pa.array(["ingest"] + [None] * (rows.num_rows - 1)))
    config = codebook.CodebookConfig(encoder="mfcc", utterance_share=0.5, segments_per_utterance=4)
    out = codebook.SegmentSampler(config)(rows)
    assert out.num_rows == rows.num_rows and out["id"].to_pylist() == rows["id"].to_pylist()
    chosen = [codebook.id_fraction(i) < 0.5 for i in rows["id"].to_pylist()]
    assert 0 < sum(chosen[1:]) < rows.num_rows - 1
    segments = out[codebook_schema.SEGMENTS].to_pylist()
    assert segments[0] is None and out[stream.REJECT_REASON][0].as_py() == "too_short"  # upstream reject kept
    for pick, count, features, dims in zip(chosen[1:], segments[1:], out[codebook_schema.FEATURES].to_pylist()[1:],
                                           out[codebook_schema.DIMS].to_pylist()[1:]):
        assert (count > 0) == pick and len(features) == count * dims
        assert count <= 4
    accepted = stream.accepted(out, codebook_schema.SCHEMA)
    assert accepted.num_rows == rows.num_rows - 1
    assert pc.sum(accepted[codebook_schema.SEGMENTS]).as_py() == sum(s for s in segments[1:])
