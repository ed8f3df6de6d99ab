"""Near-duplicate transcripts across partitions (`ingest.near_duplicates`): MinHash clusters, one
member kept in each, the others `near_duplicate` rejects ("drop") or only reported ("report").

Like `duplicates`, it runs before a run reads its sources, on workers, over files in
DIR/_near_duplicates/ (the driver only sees counts and the members to reject):

1. list: with each partition's ids, a worker writes its transcripts' MinHash signatures and LSH
   band keys (`quality.minhash`) to _minhash/<settings>/<partition>.{signatures,bands}.parquet, the band rows
   grouped by a hash bucket of their key.
2. link: one task per key bucket reads that bucket of every partition's band rows, compares the
   signatures of the members sharing a key (`minhash.clusters`) and writes the links it verifies,
   both ways, by the hash bucket of their first member.
3. components: rounds of min-label propagation, one task per member bucket: each member takes the
   smallest label its neighbours sent and sends its own on when it went down; the first round
   without a message ends it (rounds: the longest chain of links, plus two).
4. decide: one task per member bucket writes its members to the cluster table
   (DIR/_near_duplicates/clusters-<bucket>.parquet: id, partition, cluster = the kept member's id,
   kept) and returns the pending partitions' members to reject.

A member is named by its rank, "class␟partition␟id", so a cluster's smallest label is the member
kept: one in a partition committed before (class 0) ahead of a pending one (1), then by partition
and id; a committed member already rejected as a near-duplicate (2) is never kept again. So a clean
run and a resumed one keep the same member, and a partition added later never takes the place of
one already out. A transcript shorter than `min_words` words is left out (short phrases, "thank
you very much", are said by many people), and so are `duplicate_id` repeats, so ids are unique
among members. The member kept is chosen before ingest's other checks: a cluster whose kept member
fails one of them keeps none.
"""

import json
import shutil
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sylm_data.pipeline.duplicates import rejected_ids
from sylm_data.pipeline.output import write_parquet
from sylm_data.quality import minhash
from sylm_data.quality.words import words
from sylm_data.schemas.reject import Reason

MODES = ("off", "report", "drop")
BUCKETS = 16
ID, BUCKET, KEY, SIGNATURE = "id", "bucket", "key", "signature"
MEMBER, LABEL, HOLDER = "member", "label", "holder"
PARTITION, CLUSTER, KEPT = "partition", "cluster", "kept"
_SEPARATOR = "\x1f"  # below every printable character: ranks sort as (class, partition, id) tuples
_COMMITTED, _PENDING, _DROPPED = "0", "1", "2"

BANDS_SCHEMA = pa.schema([pa.field(BUCKET, pa.int16(), nullable=False), pa.field(KEY, pa.binary(), nullable=False),
                          pa.field(ID, pa.string(), nullable=False)])
# a link (member, neighbour) or a label sent (member, label): work/links/ and work/sent/<step>/, then
# <member's bucket>/<sender>.parquet
MESSAGES_SCHEMA = pa.schema([pa.field(MEMBER, pa.string(), nullable=False), pa.field(LABEL, pa.string(), nullable=False)])
CLUSTERS_SCHEMA = pa.schema([pa.field(ID, pa.string(), nullable=False), pa.field(PARTITION, pa.string(), nullable=False),
                             pa.field(CLUSTER, pa.string(), nullable=False), pa.field(KEPT, pa.bool_(), nullable=False)])


@dataclass(frozen=True)
class Settings:
    """What makes two transcripts near-duplicates: signature agreement (the Jaccard estimate of their
    `shingle`-word shingles) of at least `similarity`, found through `bands` LSH bands."""

    mode: str = "off"
    similarity: float = minhash.DEFAULT_MIN_SIMILARITY
    shingle: int = minhash.SHINGLE
    bands: int = minhash.BANDS
    min_words: int = minhash.MIN_WORDS

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def listing(self) -> str:
        """What a partition's listing depends on, as a folder name: other settings list again."""
        return f"shingle{self.shingle}-bands{self.bands}-min{self.min_words}"

    def problem(self) -> str | None:
        """What is wrong with these settings, in one line (None: nothing)."""
        if self.mode not in MODES:
            return f"near_duplicates is {self.mode!r}; it is one of {', '.join(MODES)}"
        if not 0 < self.similarity <= 1:
            return f"near_duplicate_similarity is {self.similarity}; it is above 0 and at most 1"
        if self.bands < 1 or minhash.PERMUTATIONS % self.bands:
            return f"near_duplicate_bands is {self.bands}; it divides {minhash.PERMUTATIONS} (the signature's length)"
        if self.shingle < 1 or self.min_words < 1:
            return "near_duplicate_shingle and near_duplicate_min_words are 1 or more"
        return None


@dataclass
class Found:
    """What the driver gets back: counts, and per pending partition {id: [kept id, its partition]} to reject."""

    clusters: int
    members: int
    rejects: dict[str, dict[str, list[str]]]

    def summary(self, mode: str) -> dict:
        return {"mode": mode, "clusters": self.clusters, "members": self.members,
                "rejected": sum(len(ids) for ids in self.rejects.values())}


def listing_files(folder: Path, partition: str, settings: Settings) -> tuple[Path, Path]:
    """A partition's signatures file and band rows file."""
    listing = folder / "_minhash" / settings.listing
    return listing / f"{partition}.signatures.parquet", listing / f"{partition}.bands.parquet"


def transcript_words(text: str, language: str | None) -> list[str]:
    """The words shingled: as the label checks split them (characters for zh, yue), case-folded."""
    return words(unicodedata.normalize("NFC", text), language or "")


def write_listing(records: Iterable[tuple[str, str | None, str | None]], folder: Path, partition: str,
                  settings: Settings) -> None:
    """The signatures and band keys of a partition's records ((id, transcript or None, language)),
    the first record of each id only; atomically, like `duplicates.write_ids`."""
    ids, signatures, band_rows, seen = [], [], [], set()
    for sample_id, text, language in records:
        if sample_id in seen or text is None:
            seen.add(sample_id)
            continue
        seen.add(sample_id)
        found = transcript_words(text, language)
        if len(found) < settings.min_words:
            continue
        signature = minhash.signature(found, shingle=settings.shingle)
        ids.append(sample_id)
        signatures.append(signature.astype("<u4").tobytes())
        band_rows.extend((key_bucket(key), key, sample_id) for key in minhash.band_keys(signature, settings.bands))
    signatures_file, bands_file = listing_files(folder, partition, settings)
    write_parquet(pa.table({ID: pa.array(ids, pa.string()), SIGNATURE: pa.array(signatures, pa.binary())}), signatures_file)
    bands = pa.Table.from_pylist([dict(zip(BANDS_SCHEMA.names, row)) for row in band_rows], schema=BANDS_SCHEMA)
    # one row group per bucket: a link task reads its own bucket's rows only
    write_parquet(bands, bands_file, groups=BUCKET)


def key_bucket(key: bytes) -> int:
    return int.from_bytes(key[-4:], "little") % BUCKETS


def member_bucket(member: str, buckets: int) -> int:
    return zlib.crc32(member.encode()) % buckets


def rank(kind: str, partition: str, sample_id: str) -> str:
    return _SEPARATOR.join((kind, partition, sample_id))


def unrank(member: str) -> tuple[str, str, str]:
    kind, partition, sample_id = member.split(_SEPARATOR, 2)
    return kind, partition, sample_id


def find(folder: Path, partitions: list[str], committed: list[str], excluded: dict[str, Iterable[str]],
         rejects_dir: Path | None, settings: Settings, parallel: Callable[[Callable, list], list],
         buckets: int = BUCKETS) -> Found:
    """The near-duplicate clusters among `partitions` (all listed; `committed` those already out),
    leaving out the ids of `excluded` (per partition: its `duplicate_id` repeats). `rejects_dir`
    (drop mode: DIR/rejects/<reader stage>) holds the committed partitions' rejects. `parallel(f,
    items)` runs f on every item (on workers: `runner.Workers.map`); each call's files go under
    DIR/_near_duplicates/.work, removed at the end."""
    work = folder / ".work"
    shutil.rmtree(work, ignore_errors=True)
    context = {"folder": str(folder), "work": str(work)}
    parallel(partial(link_bucket, **context, buckets=buckets, partitions=partitions, committed=committed,
                     excluded={p: sorted(ids) for p, ids in excluded.items() if ids},
                     rejects_dir=None if rejects_dir is None else str(rejects_dir), settings=settings),
             list(range(BUCKETS)))
    step = 0
    while sum(parallel(partial(propagate, work=str(work), buckets=buckets, step=step), list(range(buckets)))):
        step += 1
    decided = parallel(partial(decide, **context, drop=settings.mode == "drop"), list(range(buckets)))
    shutil.rmtree(work, ignore_errors=True)
    rejects: dict[str, dict[str, list[str]]] = {}
    for _, _, found in decided:
        for partition, sample_id, kept, kept_partition in found:
            rejects.setdefault(partition, {})[sample_id] = [kept, kept_partition]
    return Found(sum(clusters for clusters, _, _ in decided), sum(members for _, members, _ in decided), rejects)


def link_bucket(key_bucket_index: int, folder: str, work: str, buckets: int, partitions: list[str], committed: list[str],
                excluded: dict[str, list[str]], rejects_dir: str | None, settings: Settings) -> int:
    """The verified links among the members sharing a band key of one key bucket, written both ways
    to work/links/, by the member bucket of their first member; returns their count."""
    held = []
    for holder, partition in enumerate(partitions):
        rows = pq.read_table(listing_files(Path(folder), partition, settings)[1], columns=[KEY, ID],
                             filters=[(BUCKET, "=", key_bucket_index)])
        if partition in excluded:
            rows = rows.filter(pc.invert(pc.is_in(rows[ID], value_set=pa.array(excluded[partition], pa.string()))))
        held.append(rows.append_column(HOLDER, pa.array(np.full(rows.num_rows, holder, np.int32))))
    table = pa.concat_tables(held) if held else BANDS_SCHEMA.empty_table().select([KEY, ID]).append_column(
        HOLDER, pa.array([], pa.int32()))
    counts = pc.value_counts(table[KEY])
    shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    table = table.filter(pc.is_in(table[KEY], value_set=shared))
    groups: dict[bytes, list[tuple[int, str]]] = {}
    for key, sample_id, holder in zip(*(table[name].to_pylist() for name in (KEY, ID, HOLDER))):
        groups.setdefault(key, []).append((holder, sample_id))
    members = {member for group in groups.values() for member in group}
    signatures = _signatures(Path(folder), partitions, members, settings)
    ranks = _ranks(partitions, set(committed), members, rejects_dir)
    links, compared = set(), set()
    for group in groups.values():
        group = tuple(sorted(set(group)))
        if len(group) < 2 or group in compared:
            continue
        compared.add(group)
        for cluster in minhash.clusters(((ranks[member], signatures[member]) for member in group), settings.similarity):
            links.update((cluster[0], other) for other in cluster[1:])
    _scatter([pair for link in links for pair in (link, link[::-1])], Path(work) / "links", key_bucket_index, buckets)
    return len(links)


def _signatures(folder: Path, partitions: list[str], members: set[tuple[int, str]],
                settings: Settings) -> dict[tuple[int, str], np.ndarray]:
    wanted: dict[int, list[str]] = {}
    for holder, sample_id in members:
        wanted.setdefault(holder, []).append(sample_id)
    found = {}
    for holder, ids in wanted.items():
        table = pq.read_table(listing_files(folder, partitions[holder], settings)[0], filters=[(ID, "in", ids)])
        for sample_id, signature in zip(table[ID].to_pylist(), table[SIGNATURE].to_pylist()):
            found[holder, sample_id] = np.frombuffer(signature, "<u4")
    return found


def _ranks(partitions: list[str], committed: set[str], members: set[tuple[int, str]],
           rejects_dir: str | None) -> dict[tuple[int, str], str]:
    dropped = {holder: rejected_ids(rejects_dir, partitions[holder], Reason.NEAR_DUPLICATE)
               for holder in {holder for holder, _ in members if partitions[holder] in committed}}
    ranks = {}
    for holder, sample_id in members:
        kind = _PENDING if holder not in dropped else _DROPPED if sample_id in dropped[holder] else _COMMITTED
        ranks[holder, sample_id] = rank(kind, partitions[holder], sample_id)
    return ranks


def propagate(bucket: int, work: str, buckets: int, step: int) -> int:
    """One round of min-label propagation for the members of `bucket`: step 0 starts each member
    at its own rank; later steps take the smallest label sent in the step before. Sends the label of
    each member whose label went down to its neighbours; returns how many it sent."""
    work_dir = Path(work)
    labels_file, neighbours_file = work_dir / "labels" / f"{bucket}.parquet", work_dir / "neighbours" / f"{bucket}.parquet"
    if step == 0:
        links = _gathered(work_dir / "links", bucket)
        labels = {member: member for member in links[MEMBER].to_pylist()}
        lowered = set(labels)
        if lowered:
            write_parquet(links, neighbours_file)
    else:
        sent = _gathered(work_dir / "sent" / str(step - 1), bucket)
        labels = _labels(labels_file) if sent.num_rows else {}
        lowered = set()
        for member, label in zip(sent[MEMBER].to_pylist(), sent[LABEL].to_pylist()):
            if label < labels[member]:
                labels[member] = label
                lowered.add(member)
        links = pq.read_table(neighbours_file) if lowered else MESSAGES_SCHEMA.empty_table()
    if not lowered:
        return 0
    write_parquet(pa.table([list(labels), list(labels.values())], schema=MESSAGES_SCHEMA), labels_file)
    neighbours = zip(links[MEMBER].to_pylist(), links[LABEL].to_pylist())
    sending = [(neighbour, labels[member]) for member, neighbour in neighbours if member in lowered]
    _scatter(sending, work_dir / "sent" / str(step), bucket, buckets)
    return len(sending)


def _labels(path: Path) -> dict[str, str]:
    table = pq.read_table(path)
    return dict(zip(table[MEMBER].to_pylist(), table[LABEL].to_pylist()))


def _scatter(messages: list[tuple[str, str]], folder: Path, sender: int, buckets: int) -> None:
    """(member, value) messages into folder/<member's bucket>/<sender>.parquet, a file only where there are some."""
    by_bucket: dict[int, list[tuple[str, str]]] = {}
    for message in messages:
        by_bucket.setdefault(member_bucket(message[0], buckets), []).append(message)
    for bucket, held in by_bucket.items():
        members, values = zip(*held)
        write_parquet(pa.table([pa.array(members, pa.string()), pa.array(values, pa.string())], schema=MESSAGES_SCHEMA),
                      folder / str(bucket) / f"{sender}.parquet")


def _gathered(folder: Path, bucket: int) -> pa.Table:
    files = sorted((folder / str(bucket)).glob("*.parquet"))
    return pa.concat_tables(pq.read_table(file) for file in files) if files else MESSAGES_SCHEMA.empty_table()


def decide(bucket: int, folder: str, work: str, drop: bool) -> tuple[int, int, list]:
    """The cluster table rows of the members of `bucket` (clusters-<bucket>.parquet, replaced);
    returns (clusters it holds the kept member of, members, [(partition, id, kept id, kept's
    partition)] to reject: the pending members not kept, when `drop`)."""
    labels_file = Path(work) / "labels" / f"{bucket}.parquet"
    labels = _labels(labels_file) if labels_file.exists() else {}
    rows, rejected = [], []
    for member, label in sorted(labels.items()):
        kind, partition, sample_id = unrank(member)
        _, kept_partition, kept = unrank(label)
        rows.append({ID: sample_id, PARTITION: partition, CLUSTER: kept, KEPT: member == label})
        if drop and kind == _PENDING and member != label:
            rejected.append((partition, sample_id, kept, kept_partition))
    write_parquet(pa.Table.from_pylist(rows, schema=CLUSTERS_SCHEMA), Path(folder) / f"clusters-{bucket:02d}.parquet")
    return sum(member == label for member, label in labels.items()), len(labels), rejected


def by_partition(found: Found) -> dict[str, str]:
    """Per partition, a JSON object {id: [kept id, its partition]}."""
    return {partition: json.dumps(ids, sort_keys=True) for partition, ids in found.rejects.items()}
