"""The statistics and data rules behind docs/results.md."""

from __future__ import annotations

import numpy as np
import pytest

from compass.core.errors import ConfigError
from compass.lab.experiment import ExperimentConfig, cohens_d, permutation_test, quick_config
from compass.lab.experiment.dataset import clip_text


def test_permutation_test_separates_real_from_null_differences() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 1.0, 15)
    b = rng.normal(0.0, 1.0, 15)
    shifted = permutation_test(a.tolist(), b.tolist(), n_resamples=4000)
    assert shifted.p_value < 0.05 and shifted.difference > 0
    same = permutation_test(a.tolist(), (a + rng.normal(0, 0.01, 15)).tolist(), n_resamples=4000)
    assert same.p_value > 0.5
    # The smallest p a test of n resamples can give is 1/(n+1), never 0.
    far = permutation_test([10.0] * 5 + [10.1] * 5, [0.0] * 10, n_resamples=999)
    assert 1 / 1000 <= far.p_value <= 3 / 1000


def test_stratified_permutations_ignore_differences_between_strata() -> None:
    # Language "x" is easy for both methods, "y" hard; the methods are identical within each.
    a = [0.9, 0.91, 0.2, 0.21]
    b = [0.91, 0.9, 0.21, 0.2]
    result = permutation_test(
        a, b, 2000, strata_a=["x", "x", "y", "y"], strata_b=["x", "x", "y", "y"]
    )
    assert result.difference == pytest.approx(0.0) and result.p_value > 0.9


def test_cohens_d_matches_the_pooled_formula() -> None:
    a, b = [2.0, 4.0, 6.0], [1.0, 2.0, 3.0]
    pooled = np.sqrt((2 * np.var(a, ddof=1) + 2 * np.var(b, ddof=1)) / 4)
    assert cohens_d(a, b) == pytest.approx((4.0 - 2.0) / pooled)
    assert np.isnan(cohens_d([1.0], [2.0]))


def test_experiment_config_guards() -> None:
    with pytest.raises(ConfigError, match="must not be in the pool"):
        ExperimentConfig(target_languages=("de",), pool_languages=("de", "fr"))
    with pytest.raises(ConfigError, match="unknown methods"):
        ExperimentConfig(methods=("compass", "magic"))
    quick = quick_config()
    assert len(quick.target_languages) >= 3
    assert {"ja", "ru", "zh-CN"} & set(quick.target_languages)  # one non-Latin script


def test_clip_text_cuts_at_word_boundaries_and_by_characters_for_cjk() -> None:
    text = "Debian uses the APT tool to install packages from the archive and keep them updated."
    clipped = clip_text(text, 40, 10)
    assert len(clipped) <= 40 and text.startswith(clipped) and not clipped.endswith(" ")
    assert text.split(clipped, 1)[1].startswith(" ")
    assert (
        clip_text("パッケージをインストールするには apt を使います。", 40, 10)
        == "パッケージをインスト"
    )
