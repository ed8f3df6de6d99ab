"""Interleave throughput against an I/O floor, side by side in one run.

    python bench/interleave.py [--rows 100000] [--granularity word|sentence] [--context utterance|recording]

Input: synthetic tokenized rows (14 words in two sentences, 1-2 units per word on a contiguous
20 ms grid) in Parquet; in recording context, 20 consecutive segments per recording.
Stage: read the Parquet in the blocks a run's transform gets (batches of
`run.batch_rows_without_audio` rows gathered up to Ray Data's target block size), build every
sample (chunking, spans, JSON) with the transform the runner builds, write the rows and then the
shards as the shard writer does (in one process, no Ray; in recording context the shuffle by
recording and the documents too). Floor: read the same Parquet and write the stage's finished
sample bytes to tar with the same shard writer; in recording context also write the member rows
to Parquet and read them back once, the I/O a shuffle cannot do without. `--warmup` untimed passes
of each warm the allocators and the page cache (the floor, timed second, would otherwise find them
warm and the stage cold); then `--repeat` passes alternate, and the medians are compared.

A process's first passes grow its memory, and the kernel zeroes every fresh page (2 MiB at a time
where transparent huge pages are on). On a VM that hands freed memory back to its host, the
allocators' returns make later passes pay that again: here a pass of recording context spent
0.1-1.6 s in the kernel. For steadier figures, keep freed memory in the process:
    MIMALLOC_PURGE_DELAY=-1 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_MMAP_THRESHOLD_=1073741824 python bench/interleave.py
Where the scratch folder's disk is slow to hand out blocks (here ext4 mounted with `discard`, which
made a pass's shard writing take 0.1-0.45 s), `TMPDIR=/dev/shm` keeps the files in memory.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sylm_data.documents import recordings
from sylm_data.pipeline import runner
from sylm_data.pipeline.config import RunConfig
from sylm_data.pipeline.output import read_rows
from sylm_data.pipeline.shards import ShardWriter, read_members
from sylm_data.schemas import sample, stream, tokenized
from sylm_data.stages import interleave

TEXT = "The river ran past the old mill. Before it reached the sea, it slowed."
WORDS = [word.strip(".,") for word in TEXT.split()]


SEGMENTS_PER_RECORDING = 20


def synthetic_rows(count: int) -> pa.Table:
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        words, units, starts, ends, position = [], [], [], [], 0
        for word in WORDS:
            length = int(rng.integers(3, 6)) * 20
            words.append({"text": word, "start_ms": position, "end_ms": position + length})
            for cut in range(position, position + length, 60):
                units.append(int(rng.integers(0, 8192)))
                starts.append(cut)
                ends.append(min(cut + 60, position + length))
            position += length
        rows.append({"id": f"synthetic:{index:08d}", "source": "synthetic", "text": TEXT,
                     "language": "en", "words": words, "units": units, "unit_start_ms": starts, "unit_end_ms": ends,
                     "tokenizer": "synthetic:0:k8192:u8192:0", "duration_ms": position,
                     "recording": f"synthetic:r{index // SEGMENTS_PER_RECORDING:07d}",
                     "segment_index": index % SEGMENTS_PER_RECORDING, "recording_start_ms": None, "speaker": None,
                     stream.PARTITION: "p", stream.PARTITION_TOTAL: 0, stream.REJECT_STAGE: None,
                     stream.REJECT_REASON: None, stream.REJECT_DETAIL: None})
    table = pa.Table.from_pylist(rows)
    contract = stream.in_flight(tokenized.SCHEMA)  # the types tokenize writes (units are int32)
    return table.cast(pa.schema([contract.field(name) if name in contract.names else table.schema.field(name)
                                 for name in table.column_names]))


def ray_blocks(path: Path):
    """The blocks the runner's transform gets: the partition read in batches of
    `run.batch_rows_without_audio` rows, gathered by Ray Data into blocks of up to its target size."""
    from ray.data.context import DataContext

    target, gathered, size = DataContext.get_current().target_max_block_size, [], 0
    for batch in pq.ParquetFile(path).iter_batches(RunConfig().batch_rows_without_audio):
        gathered.append(batch)
        size += batch.nbytes
        if size >= target:
            yield pa.Table.from_batches(gathered)
            gathered, size = [], 0
    if gathered:
        yield pa.Table.from_batches(gathered)


def shard_samples(folder: Path) -> pa.Table:
    """The samples the stage wrote (their keys and JSON), read back from its shards."""
    samples = [(key, data.decode()) for key, extension, data in read_members(folder) if extension == "json"]
    return pa.table({sample.ROW_KEY: [key for key, _ in samples], sample.ROW_JSON: [text for _, text in samples]})


def run_stage(scratch: Path, config: interleave.InterleaveConfig) -> float:
    """The stage over scratch/tokenized.parquet, from nothing: its seconds."""
    for name in ("interleave", recordings.DOCUMENTS, "shards"):
        shutil.rmtree(scratch / name, ignore_errors=True)
    start = time.perf_counter()
    (scratch / "interleave" / "p").mkdir(parents=True)
    transform = runner.built_transform(interleave.STAGE, config)
    for index, block in enumerate(ray_blocks(scratch / "tokenized.parquet")):
        out = transform(block)
        pq.write_table(stream.accepted(out, sample.ROW_SCHEMA), scratch / "interleave" / "p" / f"{index:05d}.parquet")
    written = sum(pq.read_metadata(path).num_rows for path in (scratch / "interleave" / "p").glob("*.parquet"))
    (scratch / "interleave" / "_done").mkdir()  # the partition's commit marker, as the runner writes it
    (scratch / "interleave" / "_done" / "p.json").write_text(json.dumps({"run_id": "bench", "rows_out": written, "config_hash": "bench"}))
    interleave.write_shards(config, scratch / "interleave", lambda function, items: [function(item) for item in items])
    return time.perf_counter() - start


def run_floor(scratch: Path, samples: pa.Table, members: pa.Table | None, shard_bytes: int) -> float:
    """The I/O the stage cannot do without, of the same bytes: its seconds."""
    shutil.rmtree(scratch / "floor", ignore_errors=True)
    start = time.perf_counter()
    pq.read_table(scratch / "tokenized.parquet")
    if members is not None:
        pq.write_table(members, scratch / "members.parquet")
        pq.read_table(scratch / "members.parquet")
    with ShardWriter(scratch / "floor", shard_bytes) as writer:
        writer.write_many(samples[sample.ROW_KEY], {"json": samples[sample.ROW_JSON]})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--granularity", choices=["word", "sentence"], default="word")
    parser.add_argument("--context", choices=["utterance", "recording"], default="utterance")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes of each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes of each first")
    args = parser.parse_args()
    config = interleave.InterleaveConfig(granularity=args.granularity, context=args.context, shard_bytes=64 * 2**20)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        pq.write_table(synthetic_rows(args.rows), scratch / "tokenized.parquet", row_group_size=4096)
        run_stage(scratch, config)
        samples = shard_samples(scratch / "shards").sort_by(sample.ROW_KEY)
        members = read_rows(scratch / "interleave") if args.context == "recording" else None
        ratio = json.loads((scratch / "shards" / "index.json").read_text())["stats"]["speech_text_ratio"]
        shard_bytes = sum(p.stat().st_size for p in (scratch / "shards").glob("*.tar"))
        for _ in range(args.warmup):
            run_floor(scratch, samples, members, config.shard_bytes)
            run_stage(scratch, config)
        passes = [(run_stage(scratch, config), run_floor(scratch, samples, members, config.shard_bytes))
                  for _ in range(args.repeat)]

    stage_s, floor_s = (float(np.median(times)) for times in zip(*passes))
    print(f"{args.rows:,} rows -> {samples.num_rows:,} samples ({args.context} context), {shard_bytes / 1e6:.0f} MB of shards, "
          f"speech ratio {ratio}; medians of {args.repeat} alternating passes after {args.warmup} untimed ones")
    print(f"{'':<40} {'wall s':>8} {'samples/s':>10} {'MB/s':>7} {'x floor':>8}")
    for name, seconds in (("interleave stage (transform + shards)", stage_s), (f"floor: read Parquet, {'members, ' if members is not None else ''}write tar", floor_s)):
        print(f"{name:<40} {seconds:>8.2f} {samples.num_rows / seconds:>10,.0f} {shard_bytes / 1e6 / seconds:>7.1f} {seconds / floor_s:>8.2f}")
    print(f"stage / floor per pass: {', '.join(f'{stage / floor:.2f}' for stage, floor in passes)}")
    print(f"stage, floor s per pass: {', '.join(f'{stage:.2f}/{floor:.2f}' for stage, floor in passes)}")


if __name__ == "__main__":
    main()
