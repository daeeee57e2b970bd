"""Toy parts registered through the public swap points, for tests of the swap points.

Importing this module (``COMPASS_PLUGINS=tests.toy_parts``) registers, with the public
decorators:

* the embedder :data:`TOY_EMBEDDER`: 48-d bags of hashed character trigrams (crc32, so the same
  text gives the same vector in every process; Python's ``hash()`` is salted per process);
* the drift detector :data:`TOY_DETECTOR`: the L1 distance between the window's and the
  reference's cluster shares against a fixed limit (:data:`TOY_LIMIT`), no calibration.

Neither is meant to be good, only different from the built-ins in ways a test can see: a
dimension other than 384, and a fixed threshold where the JS detector's is calibrated.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from compass.core.detectors import ClusterShift, Counts, DriftConfig, DriftResult, register_detector
from compass.embedders import register_embedder
from compass.ports.embedder import Embedder, EmbeddingKind

TOY_EMBEDDER = "toy-trigram-48"
TOY_DIM = 48
TOY_DETECTOR = "toy-l1-fixed"
TOY_LIMIT = 0.875
"""The toy detector fires when the L1 distance between cluster shares (in [0, 2]) exceeds this."""


class TrigramEmbedder(Embedder):
    """Texts → counts of their lower-cased character trigrams hashed (crc32) into 48 buckets;
    ``kind`` is ignored. Deterministic across processes and runs."""

    model_id = f"{TOY_EMBEDDER}@1"
    dim = TOY_DIM
    batch_size = 256

    def _embed_batch(self, texts: list[str], kind: EmbeddingKind) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f"  {text.lower()} "
            for i in range(len(padded) - 2):
                out[row, zlib.crc32(padded[i : i + 3].encode()) % self.dim] += 1.0
        return out


@register_embedder(TOY_EMBEDDER, "toy: 48-d hashed character trigrams (tests)")
def _toy_embedder() -> Embedder:
    return TrigramEmbedder()


def _dense(counts: Counts, k: int | None) -> np.ndarray:
    """Counts as a dense vector over clusters ``[0, k)`` (sparse counts outside are dropped,
    as the stream's sentinel cluster of shed events must be)."""
    if isinstance(counts, Mapping):
        size = k if k else 1 + max((int(c) for c in counts), default=-1)
        vector = np.zeros(max(size, 0), dtype=np.float64)
        for cluster, value in counts.items():
            if 0 <= int(cluster) < vector.size:
                vector[int(cluster)] += float(value)
        return vector
    return np.asarray(counts, dtype=np.float64).ravel()


@register_detector(TOY_DETECTOR)
class L1Detector:
    """Flags a window whose cluster shares are more than ``limit`` away (L1) from the
    reference's. Takes the keywords the stream passes (``n_clusters`` and the fields of
    :class:`DriftConfig`); ``exact``, ``blocks`` and ``sample_rate`` do not change the verdict.
    It has no p-value: reported as 0 when it fires and 1 otherwise. Every cluster whose share
    moved is reported, so the changes' ``|delta|`` add up to the statistic."""

    def __init__(
        self, n_clusters: int | None = None, limit: float = TOY_LIMIT, **common: Any
    ) -> None:
        self.config = DriftConfig(**common)
        self.n_clusters = n_clusters
        self.limit = limit
        self.reference = np.zeros(0)

    def fit(self, reference: Counts, **_: Any) -> L1Detector:
        """Keep the reference's shares (``exact``, ``blocks`` ... are accepted and ignored)."""
        values = _dense(reference, self.n_clusters)
        if values.sum() <= 0:
            raise ValueError("the reference distribution is empty")
        self.reference = values / values.sum()
        return self

    def score(
        self, window: Counts, *, n_events: int | None = None, sample_rate: float = 1.0
    ) -> DriftResult:
        if self.reference.size == 0:
            raise RuntimeError("fit() the detector before scoring")
        values = _dense(window, self.reference.size)
        n = round(float(values.sum()))
        shares = values / max(values.sum(), 1e-12)
        delta = shares - self.reference
        distance = float(np.abs(delta).sum())
        enough = n >= self.config.min_events
        fires = enough and distance > self.limit
        changes = tuple(
            ClusterShift(
                cluster=int(c), reference_share=float(self.reference[c]),
                window_share=float(shares[c]), delta=float(delta[c]),
                contribution=float(abs(delta[c])),
            )
            for c in np.argsort(-np.abs(delta), kind="stable")
            if abs(delta[c]) > 0
        )  # fmt: skip
        return DriftResult(
            statistic=distance,
            threshold=self.limit,
            p_value=0.0 if fires else 1.0,
            n_events=n_events if n_events is not None else n,
            n_sampled=n,
            n_effective=float(n),
            sample_rate=sample_rate,
            dispersion=1.0,
            is_drift=fires,
            reason="drift" if fires else ("no_drift" if enough else "insufficient_events"),
            top_changes=changes,
        )
