"""The semantic map: a versioned clustering of the multilingual embedding space.

It is language-agnostic by design: the same meaning in two languages should fall in the same
cluster, which is what lets auxiliary data in other languages fill a target language's gaps.
Clusters come from MiniBatchKMeans on L2-normalised vectors (spherical k-means in effect, with
centroids re-normalised), ``k`` given or chosen by the cosine silhouette on a subsample over a
range (PAPER.md: "k picked by silhouette"); HDBSCAN is an option whose clusters become centroids
(the mean of each cluster's members) so that assignment is the same nearest-centroid rule.
A map's ``version`` is a content hash of its centroids and embedder: two maps with the same
version assign identically.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from compass.errors import DataError

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


def _content_version(centroids: np.ndarray, embedder_id: str) -> str:
    digest = hashlib.sha256(embedder_id.encode("utf-8"))
    digest.update(np.ascontiguousarray(centroids, dtype=np.float32).tobytes())
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
    embedder_id: str = ""
    method: ClusterMethod = "kmeans"
    seed: int = 0
    n_fit: int = 0
    silhouette: float | None = None
    silhouette_by_k: tuple[tuple[int, float], ...] = ()
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    version: str = ""

    def __post_init__(self) -> None:
        centroids = _check_vectors(self.centroids, "semantic map centroids")
        centroids = _normalise_rows(centroids)
        centroids.setflags(write=False)
        object.__setattr__(self, "centroids", centroids)
        if not self.version:
            object.__setattr__(self, "version", _content_version(centroids, self.embedder_id))

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
        k: int | None = None,
        k_range: tuple[int, int] = (8, 128),
        n_candidates: int = 8,
        seed: int = 0,
        embedder_id: str = "",
        method: ClusterMethod = "kmeans",
        silhouette_sample: int = 4000,
        min_cluster_size: int = 10,
    ) -> SemanticMap:
        """Cluster ``vectors`` (rows are embeddings).

        With ``k=None`` the k-means ``k`` is chosen among ``n_candidates`` values spread
        geometrically over ``k_range`` by the cosine silhouette on a ``silhouette_sample``
        subsample (deterministic under ``seed``). ``method='hdbscan'`` ignores ``k``.
        """
        data = _normalise_rows(_check_vectors(vectors, "semantic map fit"))
        n = data.shape[0]
        if method == "hdbscan":
            return cls._fit_hdbscan(data, seed, embedder_id, min_cluster_size)
        if method != "kmeans":
            raise DataError(f"unknown clustering method {method!r}; use 'kmeans' or 'hdbscan'")
        rng = np.random.default_rng(seed)
        sample = rng.choice(n, size=min(n, silhouette_sample), replace=False)
        if k is not None:
            if not 2 <= k <= n:
                raise DataError(f"k={k} must be between 2 and the number of vectors ({n})")
            centroids, labels = _kmeans(data, k, seed)
            score = _silhouette(data[sample], labels[sample])
            scores: tuple[tuple[int, float], ...] = ((k, score),)
        else:
            low, high = k_range
            high = min(high, n - 1)
            if low < 2 or high < low:
                raise DataError(f"k_range {k_range} is invalid for {n} vectors")
            grid = sorted(
                {round(float(x)) for x in np.geomspace(low, high, num=max(1, n_candidates))}
            )
            results = []
            best: tuple[float, int, np.ndarray] | None = None
            for candidate in grid:
                cents, labels = _kmeans(data, candidate, seed)
                score = _silhouette(data[sample], labels[sample])
                results.append((candidate, score))
                log.debug("semantic_map.k_candidate", k=candidate, silhouette=round(score, 4))
                if best is None or score > best[0]:
                    best = (score, candidate, cents)
            assert best is not None
            score, k, centroids = best
            scores = tuple(results)
        log.info("semantic_map.fit", k=k, n=n, silhouette=round(score, 4), method="kmeans")
        return cls(
            centroids=centroids,
            embedder_id=embedder_id,
            method="kmeans",
            seed=seed,
            n_fit=n,
            silhouette=score,
            silhouette_by_k=scores,
        )

    @classmethod
    def _fit_hdbscan(
        cls, data: np.ndarray, seed: int, embedder_id: str, min_cluster_size: int
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
        centroids = np.stack([data[labels == c].mean(axis=0) for c in clusters])
        kept = labels >= 0
        score = _silhouette(data[kept][:4000], labels[kept][:4000])
        return cls(
            centroids=centroids,
            embedder_id=embedder_id,
            method="hdbscan",
            seed=seed,
            n_fit=int(data.shape[0]),
            silhouette=score,
            silhouette_by_k=((len(clusters), score),),
        )

    # --------------------------------------------------------------- assignment
    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest centroid (cosine) for every row: ``int32 (n,)``; chunked, pure numpy."""
        return self.assign_with_similarity(vectors)[0]

    def assign_with_similarity(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cluster ids and the cosine similarity to the chosen centroid (assumes unit rows)."""
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DataError(
                f"vectors of shape {array.shape} do not match the semantic map's dim {self.dim}"
            )
        n = array.shape[0]
        ids = np.empty(n, dtype=np.int32)
        sims = np.empty(n, dtype=np.float32)
        centroids_t = np.ascontiguousarray(self.centroids.T)
        for start in range(0, n, _ASSIGN_CHUNK):
            scores = array[start : start + _ASSIGN_CHUNK] @ centroids_t
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
            "silhouette": self.silhouette,
            "silhouette_by_k": [list(pair) for pair in self.silhouette_by_k],
            "created_at": self.created_at,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for a database row: metadata + base64 float32 centroids."""
        data = self.metadata()
        raw = np.ascontiguousarray(self.centroids, dtype="<f4").tobytes()
        data["centroids_b64"] = base64.b64encode(raw).decode("ascii")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemanticMap:
        try:
            if int(data.get("format_version", 1)) > FORMAT_VERSION:
                raise DataError(
                    f"semantic map format {data['format_version']} is newer than this COMPASS"
                )
            raw = base64.b64decode(data["centroids_b64"])
            centroids = np.frombuffer(raw, dtype="<f4").reshape(int(data["k"]), int(data["dim"]))
            semantic_map = cls(
                centroids=centroids.astype(np.float32),
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
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"not a valid semantic map: {exc}") from None
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
                centroids = np.array(archive["centroids"], dtype=np.float32)
                meta = json.loads(bytes(archive["metadata"]).decode("utf-8"))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path} is not a semantic map file: {exc}") from None
        meta["centroids_b64"] = base64.b64encode(centroids.astype("<f4").tobytes()).decode()
        return cls.from_dict(meta)


def _kmeans(data: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import MiniBatchKMeans

    model = MiniBatchKMeans(
        n_clusters=k,
        random_state=seed,
        batch_size=min(4096, max(256, data.shape[0] // 10)),
        n_init=3,
        max_no_improvement=20,
    )
    labels = model.fit_predict(data)
    centroids = _normalise_rows(model.cluster_centers_)
    # Labels by the final nearest (cosine) centroid so that fit and assign agree exactly.
    labels = (data @ centroids.T).argmax(axis=1)
    return centroids, labels.astype(np.int32)


def _silhouette(data: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2:
        return -1.0
    return float(silhouette_score(data, labels, metric="cosine"))
