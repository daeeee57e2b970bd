"""The COMPASS sampler (PAPER.md, Algorithm 1): spend the budget where usage outweighs coverage.

1. Gap scores per cluster from the target usage and the coverage (:mod:`compass.core.gaps`).
2. The budget is split across clusters ∝ gap (largest remainder, capped by the eligible pool
   items in each cluster). **Documented behaviour for a gap cluster with no (or too few) pool
   items:** what it cannot take is redistributed to the other gap clusters by the same weights;
   if all gap clusters run dry the rest goes ∝ usage share, then evenly over the remaining
   clusters, and the report's notes say how much moved.
3. Within a cluster, items are ranked by cosine similarity to the *target's* centre of that
   cluster (the normalised mean of the target vectors assigned to it; the map centroid when the
   target has none there), so the selection resembles what users ask, not just the topic.
   Similarities are taken in the map's language-neutral space (:meth:`SemanticMap.transform`),
   so items are not preferred merely for sharing the target's language.
4. Diversity guard: an item whose cosine similarity (neutral space) to an item already chosen in
   the same cluster is at least ``dedup_threshold`` is skipped (greedy suppression, evaluated
   block-wise with matrix products). The guard is soft: near-duplicates fill a cluster only when
   it has run out of distinct items, so the budget is always met exactly.
5. One item per parallel unit (translations of one text, :mod:`.base`): before the budget is
   split, each unit keeps only its member closest to the target's centre of its own cluster,
   so capacities count distinct content.

Everything is vectorised per cluster (a loop over clusters, never over items), so selecting
10,000 from 1,000,000 takes a few seconds.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from compass.core.gaps import GapConfig, gap_scores, usage_distribution
from compass.core.samplers.allocation import allocate
from compass.core.samplers.base import (
    Sampler,
    Selection,
    SelectionRequest,
    register_sampler,
    summarise,
)

_BLOCK = 256


def target_centres(request: SelectionRequest) -> np.ndarray:
    """Per-cluster target centre: normalised mean of the target vectors in the cluster, the
    map's centroid where the target has none (or only counts were given)."""
    semantic_map = request.semantic_map
    centres = np.array(semantic_map.centroids, dtype=np.float32, copy=True)
    vectors = request.target_vectors
    if vectors is None or len(vectors) == 0:
        return centres
    neutral = semantic_map.transform(vectors)
    ids = (neutral @ semantic_map.centroids.T).argmax(axis=1)
    sums = np.zeros_like(centres)
    np.add.at(sums, ids, neutral)
    norms = np.linalg.norm(sums, axis=1)
    present = norms > 0
    centres[present] = sums[present] / norms[present, None]
    return centres


def own_centre_scores(
    request: SelectionRequest, items: np.ndarray, centres: np.ndarray
) -> np.ndarray:
    """Neutral cosine of each pool item in ``items`` to ``centres[its cluster]`` (chunked)."""
    out = np.empty(len(items), dtype=np.float32)
    clusters = request.pool.clusters
    for start in range(0, len(items), 65_536):
        chunk = items[start : start + 65_536]
        neutral = request.semantic_map.transform(request.pool.vectors[chunk])
        out[start : start + len(chunk)] = np.einsum("ij,ij->i", neutral, centres[clusters[chunk]])
    return out


def _diverse_top(
    vectors: np.ndarray, ranked: np.ndarray, want: int, threshold: float
) -> np.ndarray:
    """First ``want`` items of ``ranked`` (row indices into ``vectors``) that are not near
    duplicates of an earlier pick; topped up with the best suppressed ones if needed."""
    if threshold >= 1.0 or want >= len(ranked):
        return ranked[:want]
    kept: list[np.ndarray] = []
    kept_vectors = np.empty((0, vectors.shape[1]), dtype=np.float32)
    n_kept = 0
    suppressed: list[np.ndarray] = []
    for start in range(0, len(ranked), _BLOCK):
        block = ranked[start : start + _BLOCK]
        block_vectors = vectors[block]
        ok = np.ones(len(block), dtype=bool)
        if n_kept:
            ok &= (block_vectors @ kept_vectors.T).max(axis=1) < threshold
        inner = block_vectors @ block_vectors.T
        chosen: list[int] = []
        for i in np.flatnonzero(ok):
            if n_kept + len(chosen) >= want:
                break
            if chosen and inner[i, chosen].max() >= threshold:
                continue
            chosen.append(int(i))
        mask = np.zeros(len(block), dtype=bool)
        mask[chosen] = True
        kept.append(block[mask])
        suppressed.append(block[~mask])
        kept_vectors = np.concatenate([kept_vectors, block_vectors[mask]])
        n_kept += len(chosen)
        if n_kept >= want:
            break
    out = np.concatenate(kept)
    if len(out) < want:
        rest = np.concatenate([*suppressed, ranked[start + _BLOCK :]])
        out = np.concatenate([out, rest[: want - len(out)]])
    return out


@register_sampler("compass")
class CompassSampler(Sampler):
    """Gap-weighted selection across clusters, target-centred within them."""

    def __init__(
        self,
        alpha: float = 0.1,
        tau: float | None = None,
        weighting: str = "difference",
        dedup_threshold: float = 0.97,
    ) -> None:
        self.config = GapConfig(alpha=alpha, tau=tau, weighting=weighting)  # type: ignore[arg-type]
        self.dedup_threshold = float(dedup_threshold)

    def language_bonus(self, request: SelectionRequest) -> np.ndarray | None:
        """Added to an item's within-cluster score, per pool language id (``None``: nothing;
        the hybrid sampler overrides this)."""
        return None

    def within_cluster_reason(self) -> str:
        return "the items closest to the target's cluster centre"

    def params(self) -> dict[str, Any]:
        return {**asdict(self.config), "dedup_threshold": self.dedup_threshold}

    def select(self, request: SelectionRequest) -> Selection:
        semantic_map = request.semantic_map
        centres = target_centres(request)
        bonus = self.language_bonus(request)
        eligible = request.eligible()
        if request.dedupes():
            priority = own_centre_scores(request, eligible, centres)
            if bonus is not None:
                priority = priority + bonus[request.pool.language_ids[eligible]]
            eligible = request.representatives(eligible, priority)
        request.check_budget(len(eligible))
        usage = request.usage_counts()
        coverage = request.coverage_counts_or_zero()
        gaps = gap_scores(usage, coverage, self.config)
        p = usage_distribution(usage, self.config)

        clusters = request.pool.clusters[eligible]
        order = np.argsort(clusters, kind="stable")
        members = eligible[order]
        capacity = np.bincount(clusters, minlength=semantic_map.k).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(capacity)])

        notes: list[str] = []
        alloc = np.zeros(semantic_map.k, dtype=np.int64)
        gap_clusters = gaps > 0
        empty_gaps = int((gap_clusters & (capacity == 0)).sum())
        if empty_gaps:
            notes.append(
                f"{empty_gaps} gap cluster(s) have no eligible pool item; their share was "
                "redistributed to the other gap clusters"
            )
        for tier, tier_weights in (
            ("gap", gaps),
            ("usage share", p),
            ("even", np.ones(semantic_map.k)),
        ):
            remaining = request.budget - int(alloc.sum())
            if remaining <= 0:
                break
            if tier != "gap":
                notes.append(
                    f"gap clusters ran out of pool items; {remaining} item(s) allocated by {tier}"
                )
            alloc += allocate(remaining, tier_weights, capacity - alloc)

        vectors = request.pool.vectors
        picks: list[np.ndarray] = []
        for cluster in np.flatnonzero(alloc):
            idx = members[starts[cluster] : starts[cluster + 1]]
            want = int(alloc[cluster])
            scores = semantic_map.neutral_dot(vectors[idx], centres[cluster])[:, 0]
            if bonus is not None:
                scores = scores + bonus[request.pool.language_ids[idx]]
            ranked = idx[np.lexsort((idx, -scores))]
            # The guard looks at the best 4·want + 256 candidates (enough unless the cluster is
            # mostly duplicates; then near-duplicates fill the rest, see the module docstring).
            head = ranked[: 4 * want + 256]
            neutral = semantic_map.transform(vectors[head])
            local = _diverse_top(neutral, np.arange(len(head)), want, self.dedup_threshold)
            picks.append(head[local])
        chosen = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)

        total_gap = float(gaps.sum()) or 1.0
        weights = {int(c): float(gaps[c] / total_gap) for c in np.flatnonzero(gaps)}
        top = sorted(weights.items(), key=lambda kv: -kv[1])[:3]
        gap_share = float(alloc[gap_clusters].sum()) / max(1, request.budget)
        reason = (
            f"budget split across {int(gap_clusters.sum())} gap clusters ∝ max(0, usage share − "
            f"coverage share); {gap_share:.0%} of it went to gap clusters (largest: "
            + ", ".join(f"#{c} {w:.0%}" for c, w in top)
            + f"); within each cluster {self.within_cluster_reason()}, "
            f"skipping near-duplicates (cosine ≥ {self.dedup_threshold})."
        )
        return summarise(
            request,
            chosen,
            sampler=self.name,
            reason=reason,
            cluster_weights=weights,
            notes=notes,
            params=self.params(),
        )
