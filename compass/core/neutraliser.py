"""The semantic map's language neutraliser: which directions of the embedding space say *which
language* a text is in, estimated so that they do not also say *what it is about*.

Raw multilingual-e5 vectors carry a language component (``x ≈ c + t(x) + o_lang + ε``: a
common direction, the content, a per-language offset). The map projects out a small subspace —
the language-balanced mean direction and the span of the language offsets — before clustering
(:mod:`compass.core.semantic_map`).

**Why not the per-language means (the first estimator, ``"means"``).** ``mean_l − mean`` equals
``o_l`` only when every language talks about the same things. When language and topic are
confounded (each topic comes mostly from one language) the mean offsets *are* the topic
differences, and projecting them out erases topic: on synthetic confounded data the distance
between two topics' means fell from 0.70 to 0.002 (issue 15; ``tests/unit/test_semantic_map.py``).
Its rank also grew with the number of languages, each offset estimated from as few as 5 items.

**Pairs (``"pairs"``, the default).** A pair of texts with the same content in languages ``a``
and ``b`` has ``x_i − x_j ≈ o_a − o_b`` whatever the topic. The offsets are the least-squares
solution over all pairs, ``min_O Σ ‖x_i − x_j − (o_a − o_b)‖²`` — a graph-Laplacian system
``L O = B`` over languages (``L = Σ (e_a − e_b)(e_a − e_b)ᵀ``, ``B = Σ (e_a − e_b) dᵀ``), solved
with the minimum-norm least-squares solution (offsets centred per connected component).
Pairs come from ``parallel_keys`` (every pair inside a parallel group) where they exist, and
otherwise are mined: mutual nearest neighbours between each two languages on a subsample
(cosine). Mining works because an additive language offset shifts the similarity of a text to
*every* candidate of one language by the same amount (exactly so for dot products), so the
nearest neighbour in another language is still chosen by content — the reason multilingual-e5
retrieves translations well (its training includes bitext mining). Languages with fewer than
``min_pairs`` pairs get no offset.

**Capped rank.** The basis is the balanced mean direction plus at most ``max_rank − 1``
principal directions of the offsets (SVD), so it no longer grows with the number of languages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from compass.core.errors import DataError

DEFAULT_MAX_RANK = 8
"""Mean direction + 7 language directions (our choice; on LibreOffice/gettext data the offsets'
singular values fall off fast, see docs/method.md §3)."""

Estimator = Callable[..., tuple[np.ndarray, tuple[str, ...]]]


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _mean_direction(vectors: np.ndarray) -> np.ndarray:
    return _unit(vectors.mean(axis=0, dtype=np.float64))[None, :].astype(np.float32)


def _language_means(
    vectors: np.ndarray, labels: np.ndarray, min_per_language: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(names, inverse, means)`` of the languages with at least ``min_per_language`` items."""
    names, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(names), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors)
    keep = counts >= min_per_language
    return names[keep], inverse, (sums / counts[:, None])[keep]


def _basis(mean: np.ndarray, offsets: np.ndarray, max_rank: int) -> np.ndarray:
    """Orthonormal rows: ``mean`` first, then the top principal directions of ``offsets``
    orthogonalised against it (singular values above 1e-4 of the largest), at most
    ``max_rank`` rows in all."""
    first = _unit(mean.astype(np.float64))
    rest = offsets.astype(np.float64) - np.outer(offsets @ first, first)
    rows = [first[None, :]]
    if max_rank > 1 and len(rest):
        _, singular, directions = np.linalg.svd(rest, full_matrices=False)
        if singular.size and singular[0] > 1e-12:
            rank = int((singular > 1e-4 * singular[0]).sum())
            rows.append(directions[: min(rank, max_rank - 1)])
    return np.concatenate(rows).astype(np.float32)


def means_estimator(
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    min_per_language: int = 5,
    max_rank: int | None = None,
    **_: object,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The first estimator: the balanced mean and the per-language mean offsets (kept for
    comparison; erases topic when language and topic are confounded, see the module doc)."""
    names, _inverse, means = _language_means(vectors, labels, min_per_language)
    if len(names) < 2:
        return _mean_direction(vectors), ()
    balanced = means.mean(axis=0)
    rank = len(names) + 1 if max_rank is None else max_rank
    return _basis(balanced, means - balanced, rank), tuple(str(n) for n in names)


def parallel_pairs(parallel_keys: Sequence[str | None], max_group: int = 50) -> np.ndarray:
    """``(m, 2)`` row pairs that share a parallel key (every pair inside a group of up to
    ``max_group`` members; larger groups are cut to their first ``max_group``)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for row, key in enumerate(parallel_keys):
        if key is not None:
            groups[key].append(row)
    pairs = [
        (members[i], members[j])
        for members in groups.values()
        for i in range(min(len(members), max_group))
        for j in range(i + 1, min(len(members), max_group))
    ]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def mined_pairs(
    vectors: np.ndarray, labels: np.ndarray, per_language: int = 2000, seed: int = 0
) -> np.ndarray:
    """Mutual nearest neighbours (cosine) between every two languages, on at most
    ``per_language`` items of each (seeded subsample): ``(m, 2)`` row pairs."""
    rng = np.random.default_rng(seed)
    rows_by_language = []
    for name in np.unique(labels):
        rows = np.flatnonzero(labels == name)
        if len(rows) > per_language:
            rows = np.sort(rng.choice(rows, size=per_language, replace=False))
        rows_by_language.append(rows)
    found: list[np.ndarray] = []
    for a in range(len(rows_by_language)):
        for b in range(a + 1, len(rows_by_language)):
            rows_a, rows_b = rows_by_language[a], rows_by_language[b]
            similarity = vectors[rows_a] @ vectors[rows_b].T
            best_b = similarity.argmax(axis=1)
            best_a = similarity.argmax(axis=0)
            mutual = best_a[best_b] == np.arange(len(rows_a))
            found.append(np.stack([rows_a[mutual], rows_b[best_b[mutual]]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def pair_offsets(
    vectors: np.ndarray, language_ids: np.ndarray, pairs: np.ndarray, n_languages: int
) -> np.ndarray:
    """Least-squares language offsets from pair differences (the Laplacian system in the
    module docstring): ``(n_languages, dim)``, minimum norm (centred per component)."""
    a, b = language_ids[pairs[:, 0]], language_ids[pairs[:, 1]]
    cross = a != b
    a, b, pairs = a[cross], b[cross], pairs[cross]
    laplacian = np.zeros((n_languages, n_languages))
    np.add.at(laplacian, (a, a), 1.0)
    np.add.at(laplacian, (b, b), 1.0)
    np.add.at(laplacian, (a, b), -1.0)
    np.add.at(laplacian, (b, a), -1.0)
    differences = vectors[pairs[:, 0]].astype(np.float64) - vectors[pairs[:, 1]]
    right = np.zeros((n_languages, vectors.shape[1]))
    np.add.at(right, a, differences)
    np.add.at(right, b, -differences)
    solution, *_ = np.linalg.lstsq(laplacian, right, rcond=None)
    return np.asarray(solution)


def pairs_estimator(
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    parallel_keys: Sequence[str | None] | None = None,
    min_per_language: int = 5,
    min_pairs: int = 10,
    max_rank: int | None = DEFAULT_MAX_RANK,
    mine_per_language: int = 2000,
    **_: object,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Balanced mean + offsets from translation pairs (given or mined), rank-capped."""
    names, inverse, means = _language_means(vectors, labels, min_per_language)
    if len(names) < 2:
        return _mean_direction(vectors), ()
    balanced = means.mean(axis=0)
    pairs = np.zeros((0, 2), dtype=np.int64)
    if parallel_keys is not None:
        pairs = parallel_pairs(parallel_keys)
    if len(pairs) == 0:
        pairs = mined_pairs(vectors, labels, mine_per_language)
    all_names = np.unique(labels)
    if len(pairs):
        per_language = np.bincount(inverse[pairs.ravel()], minlength=len(all_names))
        usable = per_language >= min_pairs
        keep_pair = usable[inverse[pairs[:, 0]]] & usable[inverse[pairs[:, 1]]]
        pairs = pairs[keep_pair]
    if len(pairs) == 0:
        return _basis(balanced, np.zeros((0, vectors.shape[1])), 1), ()
    offsets = pair_offsets(vectors, inverse, pairs, len(all_names))
    paired = np.unique(inverse[pairs.ravel()])
    rank = len(paired) + 1 if max_rank is None else max_rank
    return _basis(balanced, offsets[paired], rank), tuple(str(all_names[i]) for i in paired)


ESTIMATORS: dict[str, Estimator] = {"pairs": pairs_estimator, "means": means_estimator}


def language_neutraliser(
    vectors: np.ndarray,
    languages: Sequence[str] | None,
    min_per_language: int = 5,
    *,
    parallel_keys: Sequence[str | None] | None = None,
    estimator: str = "pairs",
    max_rank: int | None = DEFAULT_MAX_RANK,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(basis, languages)``: orthonormal rows spanning the language-balanced mean direction
    and the language offsets (``estimator``: ``"pairs"`` — from translation pairs, the default
    — or ``"means"``, the per-language mean offsets), and the languages that got an offset.
    Without languages: the mean direction only. ``vectors``: ``(n, dim)`` unit rows."""
    if languages is None:
        return _mean_direction(vectors), ()
    labels = np.asarray(list(languages))
    if labels.shape[0] != vectors.shape[0]:
        raise DataError(f"{labels.shape[0]} languages for {vectors.shape[0]} vectors")
    if parallel_keys is not None and len(parallel_keys) != vectors.shape[0]:
        raise DataError(f"{len(parallel_keys)} parallel keys for {vectors.shape[0]} vectors")
    if max_rank is not None and max_rank < 1:
        raise DataError(f"max_rank must be at least 1, got {max_rank}")
    try:
        estimate = ESTIMATORS[estimator]
    except KeyError:
        known = sorted(ESTIMATORS)
        raise DataError(f"unknown neutraliser {estimator!r}; use one of {known}") from None
    return estimate(
        vectors,
        labels,
        parallel_keys=parallel_keys,
        min_per_language=min_per_language,
        max_rank=max_rank,
    )
