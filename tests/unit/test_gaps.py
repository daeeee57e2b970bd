"""Gap analysis: the formulas on counts, and the report (markdown + PNG) on real text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compass.core.errors import DataError
from compass.core.gaps import (
    GapConfig,
    build_gap_report,
    cluster_samples,
    coverage_distribution,
    gap_scores,
    js_divergence,
    render_gap_report,
    smoothed_shares,
    usage_distribution,
)
from compass.core.semantic_map import SemanticMap
from tests.unit.method_support import GapCase, gap_case


def test_smoothing_keeps_shares_a_distribution_without_zeros() -> None:
    shares = smoothed_shares(np.array([8, 0, 2, 0]), alpha=0.5)
    np.testing.assert_allclose(shares.sum(), 1.0)
    np.testing.assert_allclose(shares, np.array([8.5, 0.5, 2.5, 0.5]) / 12)
    np.testing.assert_allclose(smoothed_shares(np.array([3, 1]), alpha=0.0), [0.75, 0.25])


def test_gap_is_usage_share_not_explained_by_coverage() -> None:
    usage = np.array([50, 30, 20, 0])
    coverage = np.array([0, 30, 60, 10])
    config = GapConfig(alpha=0.0)
    p = usage_distribution(usage, config)
    q = coverage_distribution(coverage, config)
    np.testing.assert_allclose(gap_scores(usage, coverage, config), np.clip(p - q, 0, None))
    scores = gap_scores(usage, coverage, config)
    assert scores[0] == pytest.approx(0.5) and scores[2] == 0 and scores[3] == 0


def test_no_coverage_means_gap_equals_usage() -> None:
    usage = np.array([6, 3, 1])
    np.testing.assert_allclose(
        gap_scores(usage, np.zeros(3), GapConfig(alpha=0.0)), [0.6, 0.3, 0.1]
    )


def test_tau_and_the_papers_inverse_coverage_weighting() -> None:
    usage = np.array([10, 10, 10, 0])
    coverage = np.array([0, 5, 95, 0])
    capped = gap_scores(usage, coverage, GapConfig(alpha=0.0, tau=0.04))
    assert capped[1] == 0 and capped[0] > 0  # cluster 1 has coverage share 0.05 >= tau
    paper = gap_scores(usage, coverage, GapConfig(alpha=0.0, weighting="inverse_coverage"))
    # 1/(count+1) for used clusters under tau = 1/k = 0.25; unused clusters get nothing.
    np.testing.assert_allclose(paper, [1.0, 1 / 6, 0.0, 0.0])


def test_bad_configs_and_inputs() -> None:
    with pytest.raises(DataError):
        GapConfig(alpha=-1)
    with pytest.raises(DataError):
        GapConfig(tau=0)
    with pytest.raises(DataError):
        GapConfig(weighting="magic")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="empty"):
        gap_scores(np.zeros(3), np.ones(3))
    with pytest.raises(DataError):
        gap_scores(np.ones(3), np.ones(4))


def test_js_divergence_bounds() -> None:
    assert js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    assert js_divergence(np.array([2, 2]), np.array([5, 5])) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def case(cache_dir: Path) -> GapCase:
    return gap_case(cache_dir)


def test_gap_report_on_real_text_ranks_the_chat_clusters_first(
    case: GapCase, tmp_path: Path
) -> None:
    vectors = np.concatenate([case.pool_vectors, case.target_vectors, case.coverage_vectors])
    languages = [r.language for r in case.pool + case.target + case.coverage]
    semantic_map = SemanticMap.fit(vectors, languages=languages, k=8, seed=0)
    usage = semantic_map.counts(semantic_map.assign(case.target_vectors))
    coverage = semantic_map.counts(semantic_map.assign(case.coverage_vectors))
    samples = cluster_samples([r.text for r in case.target], case.target_vectors, semantic_map)
    report = build_gap_report("de", semantic_map, usage, coverage, samples=samples)

    assert report.k == 8 and report.n_usage == 60 and report.n_coverage == 60
    gaps = [row.gap for row in report.rows]
    assert gaps == sorted(gaps, reverse=True)
    top = report.rows[0]
    assert top.usage_count > top.coverage_count and top.samples
    assert set(top.samples) <= {r.text for r in case.target}
    # Users chat while the adapter saw software strings: most usage is not explained.
    assert report.gap_mass > 0.5 and report.js_usage_vs_coverage > 0.5

    markdown, png = tmp_path / "gaps.md", tmp_path / "gaps.png"
    render_gap_report(report, markdown, png, top=8)
    text = markdown.read_text()
    assert "Gap analysis for `de`" in text and top.samples[0][:20] in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
