"""The promotion gate's held-out texts: drawn from the drift window and kept out of the
selection (issue 15), and the per-text losses the gate's paired bootstrap reads.

The selection is driven by the window's usage counts per cluster. The gate evaluates on a
sample of the window's texts; before this module it used the newest texts of the very window
that drove the selection. Now the gate sample is drawn first — a deterministic pseudo-random
sample (texts ordered by a SHA-256 of the text and the drift id, so neither recency nor
position decides) — and its texts' clusters are **subtracted** from the window's counts, so the
selection never sees them. The reference sample (the window before) is drawn the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from compass.core.detectors import estimate_dispersion
from compass.core.distributions import counts_vector
from compass.ports.storage import ReferenceCounts


@dataclass(frozen=True)
class UsageText:
    """One stored prompt of the usage: its text, semantic cluster and event time."""

    text: str
    cluster: int
    occurred_at: datetime


MAX_HELD_OUT_SHARE = 0.5
"""At most this share of a window's texts is held out for the gate, so that the selection
always keeps usage to see: a window with fewer texts than ``eval_texts`` would otherwise be held
out whole, leaving the selection nothing (a full demo's first drift failed so)."""


def held_out_sample(
    items: Sequence[UsageText], n: int, salt: str, max_share: float = MAX_HELD_OUT_SHARE
) -> list[UsageText]:
    """``min(n, floor(max_share · len(items)))`` items chosen by the order of
    ``sha256(salt + text)`` (deterministic, uniform over the window whatever the order the
    store returns them in)."""

    def key(item: UsageText) -> str:
        return hashlib.sha256(f"{salt}\x1f{item.text}".encode()).hexdigest()

    return sorted(items, key=key)[: min(n, int(max_share * len(items)))]


def without_held_out(target: np.ndarray, held_out: Sequence[UsageText]) -> np.ndarray:
    """The window's counts per cluster ``(k,)`` minus the held-out texts' clusters (never
    below zero): the usage the selection may see."""
    out = np.asarray(target, dtype=np.float64).copy()
    for item in held_out:
        if 0 <= item.cluster < len(out):
            out[item.cluster] = max(0.0, out[item.cluster] - 1.0)
    return out


def reference_counts(
    usage: dict[int, Any], by_block: dict[datetime, dict[int, Any]], k: int
) -> ReferenceCounts | None:
    """The drift window as a sample — its sampled counts per cluster, sizes, sampling rate and
    block rows with their dispersion — the next drift checks' reference (``None`` without
    sampled events). Shed events (cluster −1) count in ``n_events`` only."""
    counts = {int(c): float(v.sampled) for c, v in usage.items() if c >= 0 and v.sampled > 0}
    n_sampled = round(sum(counts.values()))
    if n_sampled <= 0:
        return None
    n_events = max(n_sampled, round(sum(float(v.total) for v in usage.values())))
    rows = [
        counts_vector({c: v.sampled for c, v in block.items() if c >= 0}, k)
        for _, block in sorted(by_block.items())
    ]
    blocks = np.array(rows) if rows else np.zeros((0, k))
    return ReferenceCounts(
        counts=counts,
        n_sampled=n_sampled,
        n_events=n_events,
        sample_rate=n_sampled / n_events,
        blocks=blocks.tolist(),
        dispersion=float(estimate_dispersion(blocks)),
    )


def weights_dtype(model: Any) -> str | None:
    """Dtype of the adapter's trainable weights (``"float32"``); ``None`` if there are none."""
    for name, param in model.named_parameters():
        if "lora_" in name:
            return str(param.dtype).removeprefix("torch.")
    return None
