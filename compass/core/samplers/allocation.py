"""Integer budget allocation over clusters with capacities (used by the COMPASS sampler)."""

from __future__ import annotations

import numpy as np


def allocate(budget: int, weights: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Split ``budget`` ∝ ``weights`` into integers, never above ``capacity``.

    Largest-remainder rounding (ties to the lower cluster id); what a full cluster cannot take is
    re-split among the others by the same weights. Each round either places the whole remainder
    or fills at least one cluster, so there are at most ``k`` rounds. Returns what was placed —
    possibly less than ``budget`` when the weighted clusters run out of capacity.
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    cap = np.asarray(capacity, dtype=np.int64)
    alloc = np.zeros(w.shape, dtype=np.int64)
    remaining = int(budget)
    active = (w > 0) & (cap > 0)
    while remaining > 0 and active.any():
        share = remaining * np.where(active, w, 0.0) / w[active].sum()
        base = np.floor(share).astype(np.int64)
        extra = remaining - int(base.sum())
        if extra > 0:
            fraction = np.where(active, share - base, -1.0)
            order = np.lexsort((np.arange(len(w)), -fraction))
            base[order[:extra]] += 1
        take = np.minimum(base, cap - alloc)
        alloc += take
        remaining -= int(take.sum())
        active &= alloc < cap
    return alloc
