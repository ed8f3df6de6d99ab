"""Agglomerative reduction of a k-means codebook (e.g. 24,576 -> 8,192 units) by Ward linkage.

The nearest-neighbour-chain algorithm builds the whole Ward hierarchy in O(K²) time and O(K)
memory (distances are computed a row at a time, on the GPU when the centroids are there); the
K - target lowest merges then give the same clusters as greedy Ward stopped at `target`.
"""

import torch


def ward_distances(index: int, centroids: torch.Tensor, sizes: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Ward merge cost from cluster `index` to every cluster; +inf for inactive ones and itself."""
    squared = ((centroids - centroids[index]) ** 2).sum(1)
    cost = sizes * sizes[index] / (sizes + sizes[index]) * squared
    cost[~active] = float("inf")
    cost[index] = float("inf")
    return cost


def ward_hierarchy(centroids: torch.Tensor, sizes: torch.Tensor) -> list[tuple[float, int, int]]:
    """All K - 1 merges as (cost, kept, absorbed); the kept index stands for the merged cluster."""
    centroids, sizes = centroids.double().clone(), sizes.double().clone()
    active = torch.ones(len(centroids), dtype=torch.bool, device=centroids.device)
    merges, chain = [], []
    remaining = len(centroids)
    while remaining > 1:
        if not chain:
            chain.append(int(active.nonzero()[0]))
        current = chain[-1]
        costs = ward_distances(current, centroids, sizes, active)
        nearest = int(costs.argmin())
        if len(chain) > 1 and costs[chain[-2]] <= costs[nearest]:
            nearest = chain[-2]  # reciprocal nearest neighbours: merge them
        if len(chain) > 1 and nearest == chain[-2]:
            chain.pop()
            chain.pop()
            total = sizes[current] + sizes[nearest]
            merges.append((float(costs[nearest]), nearest, current))
            centroids[nearest] = (sizes[nearest] * centroids[nearest] + sizes[current] * centroids[current]) / total
            sizes[nearest] = total
            active[current] = False
            remaining -= 1
        else:
            chain.append(nearest)
    return merges


def ward_map(centroids: torch.Tensor, sizes: torch.Tensor, target: int) -> torch.Tensor:
    """For each centroid, its unit among `target` Ward clusters (ids 0..target-1, by first member)."""
    count = len(centroids)
    if not 0 < target <= count:
        raise ValueError(f"cannot reduce {count} centroids to {target}")
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    # Ward merge heights along the hierarchy are monotone, so the lowest merges come first
    for _, kept, absorbed in sorted(ward_hierarchy(centroids, sizes))[: count - target]:
        parent[root(absorbed)] = root(kept)
    roots = [root(node) for node in range(count)]
    ids = {value: number for number, value in enumerate(dict.fromkeys(roots))}
    return torch.tensor([ids[value] for value in roots], dtype=torch.long)
