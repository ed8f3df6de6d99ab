"""The batched, banded min-cut DP gives exactly the segmentation of a plain full-matrix DP."""

import math

import numpy as np
import pytest
import torch

from sylm_data.units.segmentation import min_cut, segment_costs, syllable_counts


def reference_min_cut(features: np.ndarray, count: int, min_frames: int, max_frames: int,
                      affinity: str = "cosine") -> list[int]:
    """Obviously correct: full similarity matrix, explicit sums, explicit DP (float64)."""
    if affinity == "cosine":
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        similarity = (1 + unit @ unit.T) / 2
    else:  # SylReg: raw dot products, shifted to be positive
        similarity = features @ features.T
        similarity = similarity - similarity.min() + 1e-7
    n = len(features)

    def cost(start: int, end: int) -> float:
        volume = similarity[start:end].sum()
        assoc = similarity[start:end, start:end].sum()
        cut = volume - assoc
        return cut / volume if affinity == "cosine" else cut / (cut + assoc / 2)

    best = {(0, 0): (0.0, None)}
    for k in range(1, count + 1):
        for end in range(n + 1):
            options = []
            for length in range(min_frames, max_frames + 1):
                if (k - 1, end - length) in best and end - length >= 0:
                    options.append((best[(k - 1, end - length)][0] + cost(end - length, end), length))
            if options:
                best[(k, end)] = min(options, key=lambda option: option[0])
    ends, end = [], n
    for k in range(count, 0, -1):
        ends.append(end)
        end -= best[(k, end)][1]
    assert end == 0
    return ends[::-1]


@pytest.mark.parametrize("affinity", ["cosine", "shifted_dot"])
@pytest.mark.parametrize("seed", range(6))
def test_batched_dp_matches_the_reference_on_random_features(seed, affinity):
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(12, 70, size=3)]
    counts = [max(math.ceil(n / 7.5), 1) for n in lengths]
    dims = 8
    items = [rng.normal(size=(n, dims)) for n in lengths]
    padded = np.zeros((len(items), max(lengths), dims))
    for index, item in enumerate(items):
        padded[index, : len(item)] = item
    lengths_t = torch.tensor(lengths)
    costs = segment_costs(torch.tensor(padded), lengths_t, max_frames=35, affinity=affinity)
    got = min_cut(costs, lengths_t, torch.tensor(counts), min_frames=3, max_frames=35)
    for item, count, ends in zip(items, counts, got):
        assert ends == reference_min_cut(item, count, 3, 35, affinity)


def test_min_cut_handles_short_items_and_asks_for_feasible_counts():
    features = torch.randn(2, 40, 4, dtype=torch.float64)
    lengths = torch.tensor([2, 40])
    costs = segment_costs(features, lengths, max_frames=35)
    short, long = min_cut(costs, lengths, torch.tensor([1, 1]), min_frames=3, max_frames=35)
    assert short == [2]  # shorter than a segment: one segment
    assert long[-1] == 40 and len(long) == 2  # one segment cannot hold 40 frames: the fewest that can


@pytest.mark.parametrize("affinity", ["cosine", "shifted_dot"])
def test_a_batch_shorter_than_the_longest_segment_is_segmented(affinity):
    rng = np.random.default_rng(7)
    for frames in (1, 2, 3, 8, 20, 34):
        item = rng.normal(size=(frames, 6))
        count = int(syllable_counts(torch.tensor([frames]), 20, 0.15)[0])
        costs = segment_costs(torch.tensor(item[None]), torch.tensor([frames]), max_frames=35, affinity=affinity)
        [ends] = min_cut(costs, torch.tensor([frames]), torch.tensor([count]), min_frames=3, max_frames=35)
        feasible = min(count, max(frames // 3, 1))
        assert ends == ([frames] if frames < 3 else reference_min_cut(item, feasible, 3, 35, affinity))


def test_segment_counts_are_rounded_as_float32_computes_them():
    frames = np.arange(0, 50_000)
    in_float32 = np.ceil(frames.astype(np.float32) * np.float32(0.02) / np.float32(0.15)).astype(np.int64)
    assert np.array_equal(syllable_counts(torch.from_numpy(frames), 20, 0.15).numpy(), in_float32)
    in_float64 = np.array([math.ceil(n * 0.02 / 0.15) for n in (105, 135, 210, 270)])
    assert (in_float64 - syllable_counts(torch.tensor([105, 135, 210, 270]), 20, 0.15).numpy()).tolist() == [1] * 4


def test_the_dp_runs_in_the_configured_precision(monkeypatch):
    from sylm_data.pipeline.stage import StageConfigError
    from sylm_data.units import segmentation
    from sylm_data.units.features import FeatureConfig
    from sylm_data.units.syllables import Segmenter

    seen = []
    original = segmentation.segment_costs
    monkeypatch.setattr(segmentation, "segment_costs", lambda features, *args: seen.append(features.dtype) or
                        original(features, *args))
    wave = np.random.default_rng(0).normal(size=24_000).astype(np.float32)
    ends = {}
    for dp_dtype in ("float64", "float32"):
        ends[dp_dtype] = Segmenter(FeatureConfig(encoder="mfcc", device="cpu", dp_dtype=dp_dtype))([wave])[0][1]
    assert seen == [torch.float64, torch.float32]
    assert ends["float64"] == ends["float32"]  # a short clip: float32's drift does not reach the cut
    assert FeatureConfig().dp_dtype == "float64"
    with pytest.raises(StageConfigError, match="dp_dtype"):
        FeatureConfig(dp_dtype="float16").resolved()


def test_memory_for_a_ten_minute_utterance_stays_banded():
    frames = 30_000  # 10 minutes at 50 Hz
    costs = segment_costs(torch.randn(1, frames, 8), torch.tensor([frames]), max_frames=35)
    assert costs.shape == (1, frames, 36)  # frames x band, never frames x frames


def test_merge_pool_assign_and_deduplicate():
    from sylm_data.units import assign

    features = torch.tensor([[1.0, 0], [1, 0.1], [1, 0], [0, 1], [0, 1], [-1, 0]])
    assert assign.merge_similar(features, [1, 3, 5, 6], threshold=0.9) == [3, 5, 6]
    assert assign.merge_similar(features, [1, 3, 5, 6], threshold=1.1) == [1, 3, 5, 6]
    pooled = assign.pool(features, [3, 5, 6])
    assert torch.allclose(pooled[1], torch.tensor([0.0, 1]))
    centroids = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    assert assign.assign(pooled, centroids) == [0, 1, 2]
    assert assign.assign(pooled, centroids, mapping=torch.tensor([7, 7, 9, 9])) == [7, 7, 9]
    assert assign.deduplicate([7, 7, 9], [3, 5, 6], frame_ms=20) == ([7, 9], [0, 100], [100, 120])


def test_kmeans_finds_separated_clusters():
    from sylm_data.units.kmeans import kmeans, nearest

    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0], [10, 0], [0, 10]])
    points = torch.cat([centre + torch.randn(100, 2, generator=generator) * 0.3 for centre in centres])
    centroids, inertia = kmeans(points, 3, seed=1)
    assert inertia < 0.3
    assert sorted(nearest(centres, centroids).tolist()) == [0, 1, 2]


def naive_ward(centroids: np.ndarray, sizes: np.ndarray, target: int) -> list[set[int]]:
    """Greedy Ward: merge the cheapest pair until `target` clusters remain (obviously correct, O(K³))."""
    clusters = [({i}, centroids[i].astype(float), float(sizes[i])) for i in range(len(centroids))]
    while len(clusters) > target:
        best = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                (_, ca, na), (_, cb, nb) = clusters[a], clusters[b]
                cost = na * nb / (na + nb) * ((ca - cb) ** 2).sum()
                if best is None or cost < best[0]:
                    best = (cost, a, b)
        _, a, b = best
        (ma, ca, na), (mb, cb, nb) = clusters[a], clusters[b]
        clusters[a] = (ma | mb, (na * ca + nb * cb) / (na + nb), na + nb)
        clusters.pop(b)
    return sorted((members for members, _, _ in clusters), key=min)


@pytest.mark.parametrize("seed", range(4))
def test_ward_map_equals_greedy_ward(seed):
    from sylm_data.units.agglomerate import ward_map

    rng = np.random.default_rng(seed)
    centroids, sizes = rng.normal(size=(30, 3)), rng.integers(1, 20, size=30)
    mapping = ward_map(torch.tensor(centroids), torch.tensor(sizes), target=9)
    groups = {}
    for index, unit in enumerate(mapping.tolist()):
        groups.setdefault(unit, set()).add(index)
    assert sorted(groups.values(), key=min) == naive_ward(centroids, sizes, 9)
    assert sorted(groups) == list(range(9))
