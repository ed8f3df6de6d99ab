"""Near-duplicate transcripts: MinHash signatures over word shingles, LSH band keys, and the
clusters among the rows that share one band key.

Made for a shuffle by band key: each row's `signature` and `band_keys` come from its words alone;
rows sharing a key meet in one group, where `clusters` compares their signatures. A row can land in
several groups (one per band it shares); the (kept, duplicate) pairs of all groups, joined as
connected components, give the corpus' clusters. Nothing here needs more than one group in memory.
Every hash is seeded by a constant, so signatures are the same in every process and run.
"""

import functools
import hashlib
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

# signatures agreeing on half their values: one word changed in a ten-word transcript still agrees on ~64%
DEFAULT_MIN_SIMILARITY = 0.5

# shorter transcripts are never near-duplicates: "thank you very much" is said by many people
MIN_WORDS = 8
PERMUTATIONS = 128
BANDS = 32  # 4 values a band: a pair of similarity s shares a key with probability 1 - (1 - s^4)^32
SHINGLE = 2  # words a shingle
SEED = 20250419
_PRIME = (1 << 61) - 1
_LOW_32 = (1 << 32) - 1


@functools.cache
def _permutations(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the hash family ((a * x + b) mod 2^61-1) mod 2^32 over 32-bit x; a < 2^31 keeps a * x + b in uint64."""
    rng = np.random.default_rng(seed)
    return (rng.integers(1, 1 << 31, size=count, dtype=np.uint64),
            rng.integers(0, 1 << 32, size=count, dtype=np.uint64))


def signature(words: Sequence[str], *, permutations: int = PERMUTATIONS, shingle: int = SHINGLE,
              seed: int = SEED) -> np.ndarray:
    """The MinHash signature (uint32, shape (`permutations`,)) of the set of `shingle`-word shingles
    of `words` (a text shorter than `shingle` words is one shingle). Two signatures agree on a share
    of their values that estimates the Jaccard similarity of the two shingle sets.
    Raises ValueError for no words: a transcript without words has no signature."""
    if not words:
        raise ValueError("a transcript without words has no MinHash signature")
    size = min(shingle, len(words))
    shingles = {" ".join(words[index:index + size]) for index in range(len(words) - size + 1)}
    hashes = np.array([int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")
                       for text in shingles], dtype=np.uint64)
    a, b = _permutations(permutations, seed)
    values = (a[:, None] * hashes[None, :] + b[:, None]) % np.uint64(_PRIME) & np.uint64(_LOW_32)
    return values.min(axis=1).astype(np.uint32)


def band_keys(signature: np.ndarray, bands: int = BANDS) -> list[bytes]:
    """One key per band of `signature` (its values cut into `bands` equal bands): 2 bytes of band
    index, then 8 of hash of the band's values. Rows that agree on a whole band share its key."""
    if len(signature) % bands:
        raise ValueError(f"a signature of {len(signature)} values does not cut into {bands} equal bands")
    values = np.asarray(signature, dtype="<u4").reshape(bands, -1)
    return [band.to_bytes(2, "big") + hashlib.blake2b(row.tobytes(), digest_size=8).digest()
            for band, row in enumerate(values)]


def similarity(first: np.ndarray, second: np.ndarray) -> float:
    """The share of values two signatures agree on: an estimate of their texts' Jaccard similarity."""
    return float(np.mean(np.asarray(first) == np.asarray(second)))


def clusters(rows: Iterable[tuple[Hashable, np.ndarray]], min_similarity: float = DEFAULT_MIN_SIMILARITY) -> list[list]:
    """The near-duplicate clusters among `rows` ((id, signature) pairs, e.g. those sharing a band
    key): rows are linked when their signatures agree on at least `min_similarity` of their values,
    and clusters are the connected groups of two or more. Each cluster lists its ids in order,
    lowest first: the row to keep. Clusters come ordered by that id.
    Rows with equal signatures are compared once; the rest pairwise (time grows with the square of
    the distinct signatures, memory with their count)."""
    ids, signatures = [], []
    for row_id, row_signature in rows:
        ids.append(row_id)
        signatures.append(np.asarray(row_signature))
    if len(ids) < 2:
        return []
    distinct, of_row = np.unique(np.stack(signatures), axis=0, return_inverse=True)
    parent = list(range(len(distinct)))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for index in range(len(distinct) - 1):
        agree = (distinct[index + 1:] == distinct[index]).mean(axis=1)
        for other in np.flatnonzero(agree >= min_similarity) + index + 1:
            parent[root(int(other))] = root(index)
    groups: dict[int, list] = {}
    for row_id, node in zip(ids, of_row.reshape(-1)):
        groups.setdefault(root(int(node)), []).append(row_id)
    return sorted((sorted(group) for group in groups.values() if len(group) > 1), key=lambda group: group[0])
