"""Gap analysis: where a language's usage outweighs what its adapter was trained on.

For a target language and a semantic map with ``k`` clusters:

* usage counts ``u_c`` (target texts per cluster, or live counts) and coverage counts ``v_c``
  (items of the data the adapter was trained on, per cluster);
* smoothed shares ``p_c = (u_c + α) / (U + kα)`` and ``q_c = (v_c + α) / (V + kα)`` — additive
  (Laplace/Lidstone) smoothing so that a small target sample does not give exact zeros; with no
  coverage data at all (``V = 0``) nothing is covered and ``q = 0``;
* the gap score (default, **our choice**): ``g_c = max(0, p_c − q_c)``, the part of the usage
  share that the coverage does not explain. Allocating a budget ∝ ``g`` moves the training mix
  toward the usage distribution; with no coverage it is plain usage matching;
* the alternative ``weighting="inverse_coverage"`` is the reconstruction in PAPER.md:
  ``g_c ∝ 1 / (v_c + ε)`` for clusters the target uses (``u_c > 0``) whose coverage share is under
  a threshold ``τ`` (default ``1/k``), zero elsewhere;
* an optional ``tau`` also applies to the default weighting: clusters with ``q_c ≥ τ`` are never
  gaps.

The paper does not publish its exact formula, α or τ (PAPER.md, "Unknown"); the defaults here
(α = 0.1, no τ) are ours and are recorded with every report and selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from compass.core.cluster_labels import clip as _clip
from compass.core.cluster_labels import label_title
from compass.core.distributions import js_divergence
from compass.core.errors import DataError
from compass.core.semantic_map import SemanticMap

GapWeighting = Literal["difference", "inverse_coverage"]


@dataclass(frozen=True)
class GapConfig:
    """How gaps are scored (see the module docstring for the formulas)."""

    alpha: float = 0.1
    tau: float | None = None
    weighting: GapWeighting = "difference"
    epsilon: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise DataError(f"smoothing alpha must be >= 0, got {self.alpha}")
        if self.tau is not None and not 0 < self.tau <= 1:
            raise DataError(f"tau must be in (0, 1], got {self.tau}")
        if self.weighting not in ("difference", "inverse_coverage"):
            raise DataError(f"unknown gap weighting {self.weighting!r}")


def smoothed_shares(counts: np.ndarray, alpha: float) -> np.ndarray:
    """``(counts + α) / (Σ + kα)``; all zeros when there are no counts and α = 0."""
    values = np.asarray(counts, dtype=np.float64)
    total = values.sum() + alpha * values.size
    if total <= 0:
        return np.zeros_like(values)
    return (values + alpha) / total


def usage_distribution(usage_counts: np.ndarray, config: GapConfig = GapConfig()) -> np.ndarray:
    counts = np.asarray(usage_counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise DataError("usage is empty: no target items in any cluster")
    return smoothed_shares(counts, config.alpha)


def coverage_distribution(
    coverage_counts: np.ndarray, config: GapConfig = GapConfig()
) -> np.ndarray:
    """Smoothed coverage shares; zeros when nothing is covered (the adapter saw no data)."""
    counts = np.asarray(coverage_counts, dtype=np.float64)
    if counts.sum() <= 0:
        return np.zeros_like(counts)
    return smoothed_shares(counts, config.alpha)


def gap_scores(
    usage_counts: np.ndarray, coverage_counts: np.ndarray, config: GapConfig = GapConfig()
) -> np.ndarray:
    """Non-negative per-cluster gap scores (not normalised)."""
    usage = np.asarray(usage_counts, dtype=np.float64)
    coverage = np.asarray(coverage_counts, dtype=np.float64)
    if usage.shape != coverage.shape:
        raise DataError(f"usage has {usage.size} clusters but coverage has {coverage.size}")
    p = usage_distribution(usage, config)
    q = coverage_distribution(coverage, config)
    if config.weighting == "inverse_coverage":
        tau = config.tau if config.tau is not None else 1.0 / usage.size
        eligible = (usage > 0) & (q < tau)
        return np.where(eligible, 1.0 / (coverage + config.epsilon), 0.0)
    scores = np.clip(p - q, 0.0, None)
    if config.tau is not None:
        scores[q >= config.tau] = 0.0
    return scores


@dataclass(frozen=True)
class GapRow:
    cluster: int
    usage_count: int
    coverage_count: int
    usage_share: float
    coverage_share: float
    gap: float
    samples: tuple[str, ...] = ()
    label: str = ""  # the cluster's name on the map (top terms), "" when the map has none


@dataclass(frozen=True)
class GapReport:
    """Clusters ranked by gap, with the numbers and example texts behind each."""

    language: str
    map_version: str
    k: int
    n_usage: int
    n_coverage: int
    js_usage_vs_coverage: float
    config: GapConfig
    rows: tuple[GapRow, ...] = field(default_factory=tuple)
    coverage_source: str = ""  # which coverage was compared, in words

    def top(self, n: int = 20) -> tuple[GapRow, ...]:
        return self.rows[:n]

    @property
    def gap_mass(self) -> float:
        """Σ max(0, p − q): the share of usage the coverage does not explain."""
        return float(sum(r.gap for r in self.rows))

    def to_markdown(self, top: int = 20) -> str:
        lines = [
            f"# Gap analysis for `{self.language}`",
            "",
            f"Semantic map `{self.map_version}` (k = {self.k}); {self.n_usage} usage items, "
            f"{self.n_coverage} coverage items. Jensen–Shannon(usage, coverage) = "
            f"{self.js_usage_vs_coverage:.3f}. Scoring: {asdict(self.config)}.",
            *([f"Coverage: {self.coverage_source}."] if self.coverage_source else []),
            "",
            "| rank | cluster | label | usage | usage share | coverage | coverage share | gap "
            "| samples |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for rank, row in enumerate(self.top(top), start=1):
            samples = " · ".join(_clip(s, 60).replace("|", "/") for s in row.samples)
            lines.append(
                f"| {rank} | {row.cluster} | {row.label.replace('|', '/')} | {row.usage_count} | "
                f"{row.usage_share:.3f} | "
                f"{row.coverage_count} | {row.coverage_share:.3f} | {row.gap:.4f} | {samples} |"
            )
        return "\n".join(lines) + "\n"


def cluster_samples(
    texts: Sequence[str],
    vectors: np.ndarray,
    semantic_map: SemanticMap,
    per_cluster: int = 3,
) -> dict[int, tuple[str, ...]]:
    """For each cluster, the texts closest to its centroid (what the cluster is "about")."""
    if len(texts) == 0:
        return {}
    ids, sims = semantic_map.assign_with_similarity(vectors)
    order = np.lexsort((-sims, ids))
    out: dict[int, list[str]] = {}
    for index in order:
        bucket = out.setdefault(int(ids[index]), [])
        if len(bucket) < per_cluster and texts[index] not in bucket:
            bucket.append(texts[index])
    return {c: tuple(v) for c, v in out.items()}


def build_gap_report(
    language: str,
    semantic_map: SemanticMap,
    usage_counts: np.ndarray,
    coverage_counts: np.ndarray | None = None,
    *,
    samples: Mapping[int, Sequence[str]] | None = None,
    config: GapConfig = GapConfig(),
    coverage_source: str = "",
) -> GapReport:
    """The gap report from per-cluster counts (use ``semantic_map.counts(assign(...))``);
    rows carry the map's cluster labels; ``coverage_source`` says in words what ``coverage``
    is (reported as is)."""
    usage = np.asarray(usage_counts, dtype=np.float64)
    coverage = (
        np.zeros_like(usage)
        if coverage_counts is None
        else np.asarray(coverage_counts, dtype=np.float64)
    )
    if usage.shape != (semantic_map.k,):
        raise DataError(f"usage must have {semantic_map.k} counts, got {usage.shape}")
    scores = gap_scores(usage, coverage, config)
    p = usage_distribution(usage, config)
    q = coverage_distribution(coverage, config)
    order = np.lexsort((-p, -scores))
    rows = tuple(
        GapRow(
            cluster=int(c),
            usage_count=int(usage[c]),
            coverage_count=int(coverage[c]),
            usage_share=float(p[c]),
            coverage_share=float(q[c]),
            gap=float(scores[c]),
            samples=tuple((samples or {}).get(int(c), ())),
            label=label_title(semantic_map.labels, int(c)),
        )
        for c in order
    )
    return GapReport(
        language=language,
        map_version=semantic_map.version,
        k=semantic_map.k,
        n_usage=int(usage.sum()),
        n_coverage=int(coverage.sum()),
        js_usage_vs_coverage=float(js_divergence(usage, coverage)) if coverage.sum() else 1.0,
        config=config,
        rows=rows,
        coverage_source=coverage_source,
    )


def render_gap_report(
    report: GapReport, path_md: str | Path | None, path_png: str | Path | None, top: int = 20
) -> None:
    """Write the markdown table and a PNG: usage vs coverage share for the top-gap clusters,
    labelled with each cluster's label (else a sample text)."""
    if path_md is not None:
        path_md = Path(path_md)
        path_md.parent.mkdir(parents=True, exist_ok=True)
        path_md.write_text(report.to_markdown(top), encoding="utf-8")
    if path_png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report.top(top))[::-1]
    labels = [f"#{r.cluster}: {_clip(_row_name(r), 48)}" for r in rows]
    positions = np.arange(len(rows))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, 0.38 * len(rows) + 1.8), sharey=True, width_ratios=(3, 1)
    )
    left.barh(positions + 0.2, [r.usage_share for r in rows], 0.4, label="usage", color="#d95f02")
    left.barh(
        positions - 0.2, [r.coverage_share for r in rows], 0.4, label="coverage", color="#1b9e77"
    )
    left.set_yticks(positions, labels, fontsize=7)
    left.set_xlabel("share of items")
    left.legend(loc="lower right")
    left.set_title(f"{report.language}: clusters ranked by gap (top {len(rows)})")
    right.barh(positions, [r.gap for r in rows], 0.6, color="#7570b3")
    right.set_xlabel("gap score")
    right.set_title(f"JS = {report.js_usage_vs_coverage:.3f}")
    fig.tight_layout()
    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path_png, dpi=110)
    plt.close(fig)


def _row_name(row: GapRow) -> str:
    return row.label or (row.samples[0] if row.samples else "")
