"""The semantic map: a versioned clustering of the multilingual embedding space.

It is language-agnostic by design: the same meaning in two languages should fall in the same
cluster, which is what lets auxiliary data in other languages fill a target language's gaps.
Clusters come from MiniBatchKMeans on L2-normalised vectors (spherical k-means in effect, with
centroids re-normalised), ``k`` given or chosen by the cosine silhouette on a subsample over a
range (PAPER.md: "k picked by silhouette"); HDBSCAN is an option whose clusters become centroids
(the mean of each cluster's members) so that assignment is the same nearest-centroid rule.
A map's ``version`` is a content hash of its centroids, its neutralisation and its embedder:
two maps with the same version assign identically.

**Language neutralisation (our addition, measured).** Raw multilingual-e5 vectors carry a strong
language component: k-means on them partly clusters by language (on LibreOffice help in en, de,
fr, ja only ~30 % of translation pairs shared a cluster at k = 16). Before clustering, the map
therefore projects out a small subspace: the (language-balanced) mean direction and the
language offsets, estimated from the fit data when ``languages`` are given to
:meth:`SemanticMap.fit` — from translation pairs (``parallel_keys``, or mined mutual nearest
neighbours), with a capped rank, so that topic is kept even when language and topic are
confounded (:mod:`compass.core.neutraliser`). This lifted the rate to ~80 %, also for languages
absent from the fit, and needs no language at assignment time. Because it is a pure projection
and the centroids lie in the complement of the removed subspace, ``argmax_c c·x`` on the
*raw* vector gives exactly the same cluster as on the projected one: any nearest-centroid
search (SQL, Qdrant, another process) over the stored centroids assigns identically.
:meth:`transform` gives the projected unit vectors, used by the samplers for within-cluster
similarities.

Each cluster carries a label for people (:mod:`compass.core.cluster_labels`), computed at fit
time from the fit texts and kept in the serialised metadata (not in the version hash).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from compass.core.cluster_labels import ClusterLabel, label_clusters
from compass.core.errors import DataError
from compass.core.neutraliser import DEFAULT_MAX_RANK, language_neutraliser

__all__ = ["SemanticMap", "language_neutraliser"]

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
ClusterMethod = Literal["kmeans", "hdbscan"]
_ASSIGN_CHUNK = 65_536


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    out = np.array(vectors, dtype=np.float32, copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out /= norms
    return out


def _content_version(arrays: tuple[np.ndarray, ...], embedder_id: str) -> str:
    digest = hashlib.sha256(embedder_id.encode("utf-8"))
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _check_vectors(vectors: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[0] == 0:
        raise DataError(f"{what}: expected a non-empty (n, dim) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{what}: vectors contain NaN or infinite values")
    return array


@dataclass(frozen=True, eq=False)
class SemanticMap:
    """Centroids of the clusters plus what is needed to trust and reproduce them."""

    centroids: np.ndarray
    language_basis: np.ndarray | None = None
    fit_languages: tuple[str, ...] = ()
    embedder_id: str = ""
    method: ClusterMethod = "kmeans"
    seed: int = 0
    n_fit: int = 0
    silhouette: float | None = None
    silhouette_by_k: tuple[tuple[int, float], ...] = ()
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    version: str = ""
    labels: tuple[ClusterLabel, ...] = ()  # names for people; not part of ``version``

    def __post_init__(self) -> None:
        centroids = np.array(_check_vectors(self.centroids, "centroids"), dtype=np.float32)
        if not np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5):
            centroids = _normalise_rows(centroids)  # already-unit rows keep their exact bits
        centroids.setflags(write=False)
        object.__setattr__(self, "centroids", centroids)
        dim = centroids.shape[1]
        basis = (
            np.zeros((0, dim), np.float32)
            if self.language_basis is None
            else np.array(self.language_basis, np.float32).reshape(-1, dim)
        )
        basis.setflags(write=False)
        object.__setattr__(self, "language_basis", basis)
        if not self.version:
            object.__setattr__(
                self, "version", _content_version((centroids, basis), self.embedder_id)
            )

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        *,
        languages: Sequence[str] | None = None,
        k: int | None = None,
        k_range: tuple[int, int] = (8, 128),
        n_candidates: int = 8,
        seed: int = 0,
        embedder_id: str = "",
        method: ClusterMethod = "kmeans",
        silhouette_sample: int = 4000,
        min_cluster_size: int = 10,
        texts: Sequence[str] | None = None,
        parallel_keys: Sequence[str | None] | None = None,
        neutraliser: str = "pairs",
        neutraliser_max_rank: int | None = DEFAULT_MAX_RANK,
    ) -> SemanticMap:
        """Cluster ``vectors`` (rows are embeddings).

        With ``k=None`` the k-means ``k`` is chosen among ``n_candidates`` values spread
        geometrically over ``k_range`` (capped at ``n/10``) by the cosine silhouette on a
        ``silhouette_sample`` subsample (deterministic under ``seed``).
        ``method='hdbscan'`` ignores ``k``.
        ``languages`` (one code per row) enables the language neutralisation described in the
        module docstring; give it whenever the fit data is multilingual. ``parallel_keys`` (one
        per row, ``None`` where a text has no translation) give the translation pairs the
        neutraliser is estimated from (mined when absent); ``neutraliser`` and
        ``neutraliser_max_rank`` choose the estimator and cap its rank
        (:func:`compass.core.neutraliser.language_neutraliser`).
        ``texts`` (one display text per row, :func:`~compass.core.cluster_labels.
        english_where_parallel`) labels the clusters (:meth:`with_labels`).
        """
        raw = _normalise_rows(_check_vectors(vectors, "semantic map fit"))
        basis, fit_languages = language_neutraliser(
            raw,
            languages,
            parallel_keys=parallel_keys,
            estimator=neutraliser,
            max_rank=neutraliser_max_rank,
        )
        data = _project(raw, basis)
        n = data.shape[0]
        extra: dict[str, Any] = {"language_basis": basis, "fit_languages": fit_languages}
        if method == "hdbscan":
            fitted = cls._fit_hdbscan(data, seed, embedder_id, min_cluster_size, extra)
            return fitted if texts is None else fitted.with_labels(texts, raw)
        if method != "kmeans":
            raise DataError(f"unknown clustering method {method!r}; use 'kmeans' or 'hdbscan'")
        rng = np.random.default_rng(seed)
        sample = rng.choice(n, size=min(n, silhouette_sample), replace=False)
        if k is not None:
            if not 2 <= k <= n:
                raise DataError(f"k={k} must be between 2 and the number of vectors ({n})")
            centroids, labels = _kmeans(data, k, seed, basis)
            score = _silhouette(data[sample], labels[sample])
            scores: tuple[tuple[int, float], ...] = ((k, score),)
        else:
            low, high = k_range
            # Silhouette keeps rising as clusters shrink toward groups of near-duplicates (e.g.
            # translations of one sentence), so k is capped at n/10: clusters of ~10+ items.
            high = min(high, max(low, n // 10), n - 1)
            if low < 2 or high < low:
                raise DataError(f"k_range {k_range} is invalid for {n} vectors")
            grid = sorted(
                {round(float(x)) for x in np.geomspace(low, high, num=max(1, n_candidates))}
            )
            results = []
            best: tuple[float, int, np.ndarray] | None = None
            for candidate in grid:
                cents, labels = _kmeans(data, candidate, seed, basis)
                score = _silhouette(data[sample], labels[sample])
                results.append((candidate, score))
                log.debug("semantic_map.k_candidate", k=candidate, silhouette=round(score, 4))
                if best is None or score > best[0]:
                    best = (score, candidate, cents)
            assert best is not None
            score, k, centroids = best
            scores = tuple(results)
        log.info("semantic_map.fit", k=k, n=n, silhouette=round(score, 4), method="kmeans")
        fitted = cls(
            centroids=centroids,
            **extra,
            embedder_id=embedder_id,
            method="kmeans",
            seed=seed,
            n_fit=n,
            silhouette=score,
            silhouette_by_k=scores,
        )
        return fitted if texts is None else fitted.with_labels(texts, raw)

    def with_labels(self, texts: Sequence[str], vectors: np.ndarray) -> SemanticMap:
        """This map with :attr:`labels` from ``texts`` (display texts, one per row of
        ``vectors``): c-TF-IDF top terms, most central texts (:mod:`.cluster_labels`)."""
        ids, sims = self.assign_with_similarity(vectors)
        return replace(self, labels=label_clusters(texts, ids, sims, self.k))

    @classmethod
    def _fit_hdbscan(
        cls,
        data: np.ndarray,
        seed: int,
        embedder_id: str,
        min_cluster_size: int,
        extra: dict[str, Any],
    ) -> SemanticMap:
        try:
            import hdbscan
        except ImportError as exc:  # pragma: no cover - pinned dependency
            raise DataError("method 'hdbscan' needs the hdbscan package") from exc
        # Euclidean distance on unit vectors is a monotone function of cosine distance.
        labels = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size).fit_predict(data)
        clusters = sorted(int(c) for c in set(labels.tolist()) if c >= 0)
        if len(clusters) < 2:
            raise DataError(
                f"HDBSCAN found {len(clusters)} cluster(s); lower min_cluster_size or use kmeans"
            )
        centroids = _project(
            np.stack([data[labels == c].mean(axis=0) for c in clusters]), extra["language_basis"]
        )
        kept = labels >= 0
        score = _silhouette(data[kept][:4000], labels[kept][:4000])
        return cls(
            centroids=centroids,
            **extra,
            embedder_id=embedder_id,
            method="hdbscan",
            seed=seed,
            n_fit=int(data.shape[0]),
            silhouette=score,
            silhouette_by_k=((len(clusters), score),),
        )

    # --------------------------------------------------------------- assignment
    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest centroid (cosine, neutral space) for every row: ``int32 (n,)``; chunked numpy.

        Centroids are orthogonal to the removed subspace, so the raw dot product has the same
        argmax as the neutral cosine — no projection needed here.
        """
        array = self._check_dim(vectors)
        ids = np.empty(array.shape[0], dtype=np.int32)
        centroids_t = np.ascontiguousarray(self.centroids.T)
        for start in range(0, array.shape[0], _ASSIGN_CHUNK):
            chunk = array[start : start + _ASSIGN_CHUNK]
            ids[start : start + len(chunk)] = (chunk @ centroids_t).argmax(axis=1)
        return ids

    def _check_dim(self, vectors: np.ndarray) -> np.ndarray:
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DataError(
                f"vectors of shape {array.shape} do not match the semantic map's dim {self.dim}"
            )
        return array

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Embeddings → the map's language-neutral unit vectors (the space clusters live in)."""
        array = self._check_dim(vectors)
        assert self.language_basis is not None
        return _project(array, self.language_basis)

    def neutral_dot(self, vectors: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """``transform(vectors) @ directions.T`` without materialising the transformed vectors:
        with ``P = I − BᵀB``, ``w·Px/|Px| = (Pw)·x / sqrt(|x|² − |Bx|²)`` — one matrix product
        ``x @ [Pw, Bᵀ]`` (a few times faster on large pools)."""
        array = self._check_dim(vectors)
        basis = self.language_basis
        assert basis is not None
        dirs = np.asarray(directions, dtype=np.float32).reshape(-1, self.dim)
        projected = dirs - (dirs @ basis.T) @ basis
        m = projected.shape[0]
        stacked = np.ascontiguousarray(np.concatenate([projected, basis]).T)
        out = np.empty((array.shape[0], m), dtype=np.float32)
        for start in range(0, array.shape[0], _ASSIGN_CHUNK):
            chunk = array[start : start + _ASSIGN_CHUNK]
            products = chunk @ stacked
            in_basis = products[:, m:].astype(np.float64)
            squared = np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64) - (
                in_basis * in_basis
            ).sum(axis=1)
            norms = np.sqrt(np.maximum(squared, 1e-12)).astype(np.float32)
            out[start : start + len(chunk)] = products[:, :m] / norms[:, None]
        return out

    def assign_with_similarity(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cluster ids and the cosine similarity (in the neutral space) to the chosen centroid."""
        array = self._check_dim(vectors)
        n = array.shape[0]
        ids = np.empty(n, dtype=np.int32)
        sims = np.empty(n, dtype=np.float32)
        for start in range(0, n, _ASSIGN_CHUNK):
            scores = self.neutral_dot(array[start : start + _ASSIGN_CHUNK], self.centroids)
            best = scores.argmax(axis=1)
            ids[start : start + len(best)] = best
            sims[start : start + len(best)] = scores[np.arange(len(best)), best]
        return ids, sims

    def counts(self, cluster_ids: np.ndarray) -> np.ndarray:
        """Items per cluster, ``int64 (k,)``."""
        ids = np.asarray(cluster_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.k):
            raise DataError(f"cluster ids outside 0..{self.k - 1}")
        return np.bincount(ids, minlength=self.k)

    # -------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "embedder_id": self.embedder_id,
            "method": self.method,
            "seed": self.seed,
            "n_fit": self.n_fit,
            "k": self.k,
            "dim": self.dim,
            "fit_languages": list(self.fit_languages),
            # The neutraliser travels in the metadata too, so a store that keeps only the
            # metadata JSON and the centroid bytes can rebuild the map with from_dict().
            "language_basis_b64": _b64(self.language_basis),
            "silhouette": self.silhouette,
            "silhouette_by_k": [list(pair) for pair in self.silhouette_by_k],
            "created_at": self.created_at,
            "labels": [label.to_dict() for label in self.labels],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for a database row: metadata + base64 float32 centroids."""
        data = self.metadata()
        data["centroids_b64"] = _b64(self.centroids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemanticMap:
        try:
            if int(data.get("format_version", 1)) > FORMAT_VERSION:
                raise DataError(
                    f"semantic map format {data['format_version']} is newer than this COMPASS"
                )
            dim = int(data["dim"])
            centroids = _unb64(data["centroids_b64"]).reshape(int(data["k"]), dim)
            basis = (
                _unb64(data["language_basis_b64"]).reshape(-1, dim)
                if data.get("language_basis_b64") is not None
                else None
            )
            semantic_map = cls(
                centroids=centroids,
                language_basis=basis,
                fit_languages=tuple(data.get("fit_languages", ())),
                embedder_id=str(data.get("embedder_id", "")),
                method=data.get("method", "kmeans"),
                seed=int(data.get("seed", 0)),
                n_fit=int(data.get("n_fit", 0)),
                silhouette=data.get("silhouette"),
                silhouette_by_k=tuple(
                    (int(a), float(b)) for a, b in data.get("silhouette_by_k", [])
                ),
                created_at=str(data.get("created_at", "")),
                version=str(data.get("version", "")),
                labels=tuple(ClusterLabel.from_dict(x) for x in data.get("labels") or ()),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"not a valid semantic map: {exc}") from None
        expected = data.get("version")
        if expected and expected != _content_version(
            (semantic_map.centroids, semantic_map.language_basis),  # type: ignore[arg-type]
            semantic_map.embedder_id,
        ):
            raise DataError(f"semantic map {expected}: content does not match its version")
        return semantic_map

    def save(self, path: str | Path) -> Path:
        """One ``.npz`` file: centroids + metadata JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            centroids=self.centroids,
            metadata=np.frombuffer(json.dumps(self.metadata()).encode("utf-8"), dtype=np.uint8),
        )
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SemanticMap:
        path = Path(path)
        if not path.exists():
            raise DataError(f"semantic map {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as archive:
                meta = json.loads(bytes(archive["metadata"]).decode("utf-8"))
                meta["centroids_b64"] = _b64(archive["centroids"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            # truncated or corrupt: numpy's zip reader raises EOFError / BadZipFile (bad CRC)
            raise DataError(f"{path} is not a semantic map file: {exc}") from None
        return cls.from_dict(meta)


def _b64(array: np.ndarray | None) -> str:
    assert array is not None
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _unb64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def _project(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Remove the ``basis`` subspace from every row and re-normalise."""
    out = np.array(vectors, dtype=np.float32, copy=True)
    if basis.shape[0]:
        out -= (out @ basis.T) @ basis
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out /= norms
    return out


def _kmeans(
    data: np.ndarray, k: int, seed: int, basis: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    model = MiniBatchKMeans(
        n_clusters=k,
        random_state=seed,
        batch_size=min(4096, max(256, data.shape[0] // 10)),
        n_init=3,
        max_no_improvement=20,
    )
    # MiniBatchKMeans gains nothing from OpenMP threads on small batches, and on a shared
    # machine their spin-waiting made it up to 100x slower (measured): run it single-threaded.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(data)
    # Project again so that centroids are exactly orthogonal to the removed subspace (then raw
    # and projected vectors have the same nearest centroid).
    centroids = _project(model.cluster_centers_, basis)
    # Labels by the final nearest (cosine) centroid so that fit and assign agree exactly.
    labels = (data @ centroids.T).argmax(axis=1)
    return centroids, labels.astype(np.int32)


def _silhouette(data: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2:
        return -1.0
    return float(silhouette_score(data, labels, metric="cosine"))
