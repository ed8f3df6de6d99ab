"""Learning-rate factors (multiplied by `optim.lr`), as pure functions of the optimizer step."""

import math

from sylm_data.train.config import OptimConfig


def warmup_stable_decay(step: int, steps: int, warmup: int, decay_share: float, shape: str, min_ratio: float) -> float:
    """The factor for update number `step` (0-based) of `steps`: linear warmup over `warmup`
    updates, flat, then a decay over the last `decay_share` of the updates towards `min_ratio`
    (reached where the schedule would take its next update)."""
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = round(steps * decay_share)
    decay_start = steps - decay_steps
    if step < decay_start or not decay_steps:
        return 1.0
    progress = (step - decay_start) / decay_steps  # the first decay update is still at the full rate
    if shape == "linear":
        remaining = 1 - progress
    elif shape == "cosine":
        remaining = 0.5 * (1 + math.cos(math.pi * progress))
    else:  # 1-sqrt (Hägele et al., 2024)
        remaining = 1 - math.sqrt(progress)
    return min_ratio + (1 - min_ratio) * remaining


def factor(step: int, optim: OptimConfig) -> float:
    """Both phases: embedding-only updates (warmup, then flat), then the full model's own schedule."""
    if step < optim.embed_only_steps:
        return min((step + 1) / optim.warmup_steps, 1.0) if optim.warmup_steps else 1.0
    return warmup_stable_decay(step - optim.embed_only_steps, optim.steps, optim.warmup_steps, optim.decay_share,
                               optim.decay_shape, optim.min_lr_ratio)
