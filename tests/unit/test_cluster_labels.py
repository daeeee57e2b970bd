"""Cluster labels: c-TF-IDF top terms and central texts, in English where a parallel text exists,
computed at fit time and carried by the map's serialisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compass.core.cluster_labels import (
    ClusterLabel,
    class_tfidf_terms,
    english_where_parallel,
    label_clusters,
)
from compass.core.errors import DataError
from compass.core.semantic_map import SemanticMap
from compass.corpora.parallel import english_of_key
from tests.unit.method_support import ParallelSet, gettext_parallel


def test_class_tfidf_matches_the_formula_on_a_small_example() -> None:
    documents = [
        ["chart axis legend", "chart axis title", "open the chart file", "chart axis"],
        ["printer paper queue", "printer queue paused", "open the printer file"],
    ]
    terms = class_tfidf_terms(documents, n_terms=3)
    # Class 0 (four members, so a term must be in two of them): chart ×4 and axis ×3 pass;
    # legend, title, open, file are in one member each. Class 1 (three members, no filter):
    # 9 terms ("the" is a stop word); A = (11 + 9) / 2 = 10; printer: tf 3/9, f 3 →
    # 3/9·ln(1 + 10/3) = 0.489; queue 2/9·ln(1 + 10/2) = 0.398; paper, paused (f 1)
    # 1/9·ln(11) = 0.266; open, file (f 2) 1/9·ln(6) = 0.199.
    assert terms[0] == ("chart", "axis")
    assert terms[1] == ("printer", "queue", "paper")


def test_terms_shared_by_every_class_rank_below_distinctive_ones() -> None:
    documents = [
        ["settings keyboard layout", "settings keyboard"],
        ["settings font", "settings font size"],
    ]
    terms = class_tfidf_terms(documents, n_terms=2, min_member_df=1)
    assert terms[0][0] == "keyboard"
    assert terms[1][0] == "font"


def test_english_where_parallel_prefers_the_english_member_then_the_key() -> None:
    shown = english_where_parallel(
        ["Datei öffnen", "Open file", "Drucker", "Fichier"],
        ["de", "en", "de", "fr"],
        ["k1", "k1", "mo:cups:Printer", None],
        english_of_key,
    )
    assert shown == ["Open file", "Open file", "Printer", "Fichier"]
    with pytest.raises(DataError):
        english_where_parallel(["a"], ["de", "fr"], [None])


def test_label_clusters_orders_central_texts_and_names_empty_clusters() -> None:
    texts = ["alpha beta", "alpha gamma", "delta", "alpha beta"]
    labels = label_clusters(texts, np.array([0, 0, 1, 0]), np.array([0.5, 0.9, 0.7, 0.8]), k=3)
    assert [label.size for label in labels] == [3, 1, 0]
    assert labels[0].texts == ("alpha gamma", "alpha beta")  # most central first, de-duplicated
    assert labels[0].terms[0] == "alpha"
    assert labels[2].title == "cluster 2" and labels[1].title == "delta"
    with pytest.raises(DataError):
        label_clusters(texts, np.array([0, 0, 5, 0]), np.ones(4), k=3)


@pytest.fixture(scope="module")
def parallel(cache_dir: Path) -> ParallelSet:
    return gettext_parallel(cache_dir)


def test_a_fitted_map_is_labelled_in_english_and_keeps_its_labels(
    parallel: ParallelSet, tmp_path: Path
) -> None:
    keys = [f"group{g}" for g in parallel.groups]
    shown = english_where_parallel(parallel.texts, parallel.languages, keys)
    pairs = zip(parallel.texts, parallel.languages, strict=True)
    english = {t for t, lang in pairs if lang == "en"}
    assert set(shown) == english
    semantic_map = SemanticMap.fit(
        parallel.vectors, languages=parallel.languages, k=6, seed=0, texts=shown
    )
    unlabelled = SemanticMap.fit(parallel.vectors, languages=parallel.languages, k=6, seed=0)
    assert semantic_map.version == unlabelled.version  # labels are not part of the content
    assert len(semantic_map.labels) == 6
    ids = semantic_map.assign(parallel.vectors)
    for label in semantic_map.labels:
        members = [" ".join(shown[i].split()) for i in np.flatnonzero(ids == label.cluster)]
        assert label.size == len(members)
        if not members:
            continue
        assert label.terms, f"cluster {label.cluster} has members but no terms"
        words = " ".join(members).lower()
        assert all(term in words for term in label.terms)
        assert set(label.texts) <= set(members)
        # the top term is more frequent in its own cluster than in the rest of the data
        others = [shown[i] for i in np.flatnonzero(ids != label.cluster)]
        inside = sum(label.terms[0] in m.lower() for m in members) / len(members)
        outside = sum(label.terms[0] in m.lower() for m in others) / max(len(others), 1)
        assert inside > outside
    restored = SemanticMap.from_dict(semantic_map.to_dict())
    assert restored.labels == semantic_map.labels
    loaded = SemanticMap.load(semantic_map.save(tmp_path / "map.npz"))
    assert loaded.labels == semantic_map.labels and loaded.version == semantic_map.version
    assert SemanticMap.from_dict(unlabelled.to_dict() | {"labels": None}).labels == ()


def test_a_label_round_trips_and_rejects_garbage() -> None:
    label = ClusterLabel(3, 12, ("printer", "queue"), ("Printer queue",))
    assert ClusterLabel.from_dict(label.to_dict()) == label
    assert label.title == "printer · queue"
    with pytest.raises(DataError):
        ClusterLabel.from_dict({"size": 2})
