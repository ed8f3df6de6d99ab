"""Syllable-like segmentation: exact minimum normalized cut by dynamic programming, batched in torch.

Two affinities, each with the cut cost it was published with:
- `cosine` (default): S[t, s] = (1 + cos(x_t, x_s)) / 2; a segment A costs cut(A) / vol(A),
  i.e. 1 - assoc(A) / vol(A).
- `shifted_dot` (SylReg): S[t, s] = x_t · x_s shifted so that the item's smallest entry is 1e-7;
  a segment costs cut(A) / (cut(A) + assoc(A) / 2).
A segmentation into K segments of `min_frames`..`max_frames` frames each minimises the sum of its
segments' costs.

Memory stays linear in the utterance length where it matters: segments are at most `max_frames`
long, so assoc only needs the band |t - s| < max_frames of S, and vol needs only row sums, which
are a·x_t · Σ x_s + n·b for S = a·x_t · x_s + b — no T×T matrix is ever kept (the shifted dot
product's minimum is found a block of rows at a time). The DP keeps one row of values; the
back-pointers are one byte per (segment count, frame).
"""

import math

import torch

INFINITY = float("inf")


COSINE, SHIFTED_DOT = "cosine", "shifted_dot"
AFFINITIES = (COSINE, SHIFTED_DOT)


def syllable_counts(frames: torch.Tensor, frame_ms: int, sec_per_syllable: float) -> torch.Tensor:
    """Segments asked of each item: ceil(frames · frame seconds / sec_per_syllable), computed in float32
    as SylReg's release computes it (float64 gives one more at some lengths, e.g. 105, 135, 210 and
    270 frames of 20 ms at 0.15 s)."""
    return torch.ceil(frames.to(torch.float32) * (frame_ms / 1000) / sec_per_syllable).long()


def _affine_form(features: torch.Tensor, lengths: torch.Tensor, affinity: str) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(vectors v, scale a, per-item offset b) such that S[t, s] = a · v_t · v_s + b."""
    if affinity == COSINE:
        return torch.nn.functional.normalize(features, dim=-1), 0.5, features.new_full((len(features),), 0.5)
    if affinity == SHIFTED_DOT:
        return features, 1.0, 1e-7 - _smallest_dot(features, lengths)
    raise ValueError(f"unknown affinity {affinity!r}: use one of {', '.join(AFFINITIES)}")


def _smallest_dot(features: torch.Tensor, lengths: torch.Tensor, rows: int = 2048) -> torch.Tensor:
    """min over valid frame pairs of x_t · x_s, per item, `rows` rows of the product at a time."""
    smallest = []
    for item, length in zip(features, lengths.tolist()):
        valid = item[:length]
        blocks = [(valid[start : start + rows] @ valid.T).min() for start in range(0, length, rows)]
        smallest.append(torch.stack(blocks).min() if blocks else valid.new_zeros(()))
    return torch.stack(smallest)


def band_similarity(vectors: torch.Tensor, scale: float, offset: torch.Tensor, max_frames: int) -> torch.Tensor:
    """(B, T, D) -> (B, T, max_frames): band[b, t, d] = S[t, t + d] (0 beyond the end)."""
    batch, frames, _ = vectors.shape
    band = vectors.new_zeros(batch, frames, max_frames)
    for distance in range(max_frames):
        if distance < frames:
            dots = (vectors[:, : frames - distance] * vectors[:, distance:]).sum(-1)
            band[:, : frames - distance, distance] = scale * dots + offset[:, None]
    return band


def segment_costs(features: torch.Tensor, lengths: torch.Tensor, max_frames: int,
                  affinity: str = COSINE) -> torch.Tensor:
    """cost[b, a, l] of the segment of frames [a, a + l) for l in 1..max_frames (index 0 unused);
    +inf where the segment runs past the item's length. Padding frames never count."""
    batch, frames, _ = features.shape
    positions = torch.arange(frames, device=features.device)
    valid = positions[None, :] < lengths[:, None]  # (B, T)
    features = features * valid[..., None]
    vectors, scale, offset = _affine_form(features, lengths, affinity)
    band = band_similarity(vectors, scale, offset, max_frames) * valid[..., None]
    # band entries that reach past an item's end pair a real frame with padding: drop them
    for distance in range(1, max_frames):
        band[:, :, distance] *= (positions[None, :] + distance) < lengths[:, None]
    row_sums = scale * (vectors * vectors.sum(1, keepdim=True)).sum(-1) + lengths[:, None].to(vectors.dtype) * offset[:, None]
    row_sums = row_sums * valid
    volume_prefix = torch.nn.functional.pad(row_sums.cumsum(1), (1, 0))  # (B, T + 1)

    # column[b, c, m] = sum over d = 1..m of S[c - d, c]: the similarity of frame c to the m frames before it
    column = band.new_zeros(batch, frames, max_frames)
    for m in range(1, max_frames):
        shifted = band.new_zeros(batch, frames)
        if m < frames:  # a batch shorter than max_frames has no frame m before any other
            shifted[:, m:] = band[:, : frames - m, m]
        column[:, :, m] = column[:, :, m - 1] + shifted

    costs = band.new_full((batch, frames, max_frames + 1), INFINITY)
    assoc = band.new_zeros(batch, frames)
    for length in range(1, max_frames + 1):
        last = positions + length - 1  # the frame this length adds
        inside = last < frames
        added = band.new_zeros(batch, frames)
        added[:, inside] = band[:, last[inside], 0] + 2 * column[:, last[inside], length - 1]
        assoc = assoc + added
        end = (positions + length).clamp(max=frames)
        volume = volume_prefix[:, end] - volume_prefix[:, positions]
        cut = volume - assoc
        denominator = volume if affinity == COSINE else cut + assoc / 2
        fits = (positions[None, :] + length) <= lengths[:, None]
        costs[:, :, length] = torch.where(fits, cut / denominator.clamp_min(1e-12), INFINITY)
    return costs


def min_cut(costs: torch.Tensor, lengths: torch.Tensor, num_segments: torch.Tensor,
            min_frames: int, max_frames: int) -> list[list[int]]:
    """Exact minimum-cost segmentation of each item into num_segments[b] segments.

    Returns each item's segment end frames (the last equals its length). An item whose length
    cannot be split that way (too short for its count, or too long) is segmented into the
    feasible count nearest to the one asked for; one shorter than `min_frames` is one segment."""
    batch, frames, _ = costs.shape
    counts = [
        min(max(int(k), math.ceil(int(n) / max_frames)), max(int(n) // min_frames, 1))
        for k, n in zip(num_segments.tolist(), lengths.tolist())
    ]
    most = max(counts)
    # ending[b, t, l] = cost of the segment of length l that ends at frame t
    ending = costs.new_full((batch, frames + 1, max_frames + 1), INFINITY)
    for length in range(min_frames, min(max_frames, frames) + 1):
        ending[:, length:, length] = costs[:, : frames + 1 - length, length]
    best = costs.new_full((batch, frames + 1), INFINITY)
    best[:, 0] = 0
    pointers = torch.zeros(most, batch, frames + 1, dtype=torch.uint8, device=costs.device)
    for k in range(1, most + 1):
        # k segments end between frame k * min_frames and k * max_frames: compute only that window
        low, high = k * min_frames, min(k * max_frames, frames)
        if high < low:  # every item is shorter than min_frames: each is one segment
            break
        candidates = costs.new_full((batch, high + 1 - low, max_frames + 1), INFINITY)
        for length in range(min_frames, max_frames + 1):
            first = max(low, length)
            if first <= high:
                candidates[:, first - low :, length] = best[:, first - length : high + 1 - length] + ending[:, first : high + 1, length]
        best = costs.new_full((batch, frames + 1), INFINITY)
        best[:, low : high + 1], pointers[k - 1, :, low : high + 1] = candidates.min(dim=2)
    boundaries = []
    pointers = pointers.cpu()
    for item, (count, length) in enumerate(zip(counts, lengths.tolist())):
        if length < min_frames:  # too short to cut: one segment
            boundaries.append([length])
            continue
        ends, frame = [], length
        for k in range(count, 0, -1):
            ends.append(frame)
            frame -= int(pointers[k - 1, item, frame])
        boundaries.append(ends[::-1])
    return boundaries
