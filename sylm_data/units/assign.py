"""From segments to units: merge similar neighbours, mean-pool (and standardize, for SylReg), name the
nearest centroid, deduplicate.

Pure functions over one utterance's features (frames, dims) and segment end frames.
"""

import torch

from sylm_data.units.kmeans import nearest


def merge_similar(features: torch.Tensor, ends: list[int], threshold: float, keep: int = 1) -> list[int]:
    """Repeatedly merge the adjacent pair of segments whose mean features are most cosine-similar,
    while that similarity is at least `threshold` and more than `keep` segments remain.
    Returns the remaining segment ends."""
    ends = list(ends)
    starts = [0, *ends[:-1]]
    sums = [features[start:end].sum(0) for start, end in zip(starts, ends)]
    while len(ends) > keep:
        means = torch.stack([total / (end - start) for total, start, end in zip(sums, starts, ends)])
        similarity = torch.nn.functional.cosine_similarity(means[:-1], means[1:], dim=1)
        best = int(similarity.argmax())
        if similarity[best] < threshold:
            break
        sums[best] = sums[best] + sums.pop(best + 1)
        ends.pop(best)
        starts.pop(best + 1)
    return ends


def pool(features: torch.Tensor, ends: list[int]) -> torch.Tensor:
    """Mean feature of each segment: (segments, dims)."""
    starts = [0, *ends[:-1]]
    return torch.stack([features[start:end].mean(0) for start, end in zip(starts, ends)])


def standardize(pooled: torch.Tensor) -> torch.Tensor:
    """Each row (segments, dims) shifted to zero mean and scaled to unit standard deviation (unbiased,
    n - 1) over its own dims: the space SylReg's released codebook was fitted in."""
    return (pooled - pooled.mean(1, keepdim=True)) / pooled.std(1, keepdim=True)


def assign(pooled: torch.Tensor, centroids: torch.Tensor, mapping: torch.Tensor | None = None) -> list[int]:
    """Nearest centroid of each pooled segment, optionally renamed through an agglomerative map."""
    units = nearest(pooled, centroids)
    if mapping is not None:
        units = mapping[units]
    return units.tolist()


def deduplicate(units: list[int], ends: list[int], frame_ms: int) -> tuple[list[int], list[int], list[int]]:
    """Merge runs of one unit; returns (units, start_ms, end_ms) with the runs' spans joined."""
    out_units, out_starts, out_ends = [], [], []
    start = 0
    for unit, end in zip(units, ends):
        if out_units and out_units[-1] == unit:
            out_ends[-1] = end * frame_ms
        else:
            out_units.append(unit)
            out_starts.append(start * frame_ms)
            out_ends.append(end * frame_ms)
        start = end
    return out_units, out_starts, out_ends
