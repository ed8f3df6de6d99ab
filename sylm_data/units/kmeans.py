"""k-means in torch (k-means++ seeding, then Lloyd iterations), on the GPU when the data is there."""

import torch


def nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) for each row of `points`, in chunks to bound memory."""
    squared = (centroids * centroids).sum(1)
    out = []
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        out.append((squared[None, :] - 2 * block @ centroids.T).argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=points.device)


def kmeans(points: torch.Tensor, k: int, iterations: int = 50, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(centroids (k, D), inertia: mean squared distance to the nearest centroid)."""
    if len(points) < k:
        raise ValueError(f"{len(points)} points cannot make {k} clusters")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    centroids = _plus_plus(points, k, generator)
    for _ in range(iterations):
        assignment = nearest(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).to(points.dtype)
        empty = counts == 0
        updated = sums / counts.clamp_min(1)[:, None]
        # an empty cluster is re-seeded on the point farthest from its centroid
        if empty.any():
            distance = ((points - centroids[assignment]) ** 2).sum(1)
            updated[empty] = points[distance.topk(int(empty.sum())).indices]
        if torch.allclose(updated, centroids):
            break
        centroids = updated
    assignment = nearest(points, centroids)
    inertia = ((points - centroids[assignment]) ** 2).sum(1).mean().item()
    return centroids, inertia


def _plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    first = torch.randint(len(points), (1,), generator=generator).item()
    chosen = [first]
    distance = ((points - points[first]) ** 2).sum(1)
    for _ in range(1, k):
        weights = distance.clamp_min(0).cpu().double()
        index = torch.multinomial(weights / weights.sum(), 1, generator=generator).item() if weights.sum() > 0 else \
            torch.randint(len(points), (1,), generator=generator).item()
        chosen.append(index)
        distance = torch.minimum(distance, ((points - points[index]) ** 2).sum(1))
    return points[chosen].clone()
