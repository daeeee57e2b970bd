"""Embedding-space importance resampling, a DSIR-style baseline (Xie et al., 2023).

DSIR estimates the importance weight ``w(x) = p_target(x) / p_pool(x)`` with hashed n-gram
models and resamples the pool by ``w``. We do the same in the embedding space (our choice):

* ``density="logistic"`` (default when target vectors are given): a logistic regression that
  tells target vectors from a pool subsample, in the semantic map's language-neutral space (so
  it weighs meaning rather than the target's language); with balanced class weights its
  log-odds estimate ``log w(x)`` up to a constant (the classifier trick for density ratios);
* ``density="cluster"`` (or when usage is given only as per-cluster counts): the ratio of the
  target's and the pool's smoothed cluster histograms.

Resampling without replacement ∝ ``w`` uses the Gumbel-top-k trick: keys ``log w + G`` with
``G ~ Gumbel(0, 1)`` under the seed, then the ``budget`` largest keys — one vectorised pass.
With parallel keys in the pool, only the highest-key member of each parallel unit competes
(a full sort instead of a partition).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compass.core.errors import DataError
from compass.core.gaps import smoothed_shares
from compass.core.samplers.base import (
    Sampler,
    Selection,
    SelectionRequest,
    register_sampler,
    summarise,
)


@register_sampler("importance")
class ImportanceSampler(Sampler):
    """Resample the pool by the estimated target/pool density ratio."""

    def __init__(
        self,
        density: str = "logistic",
        pool_sample: int = 20_000,
        regularisation: float = 1.0,
        temperature: float = 1.0,
    ) -> None:
        if density not in ("logistic", "cluster"):
            raise DataError(f"unknown density model {density!r}; use 'logistic' or 'cluster'")
        if temperature <= 0:
            raise DataError("temperature must be positive")
        self.density = density
        self.pool_sample = int(pool_sample)
        self.regularisation = float(regularisation)
        self.temperature = float(temperature)

    def params(self) -> dict[str, Any]:
        return {
            "density": self.density,
            "pool_sample": self.pool_sample,
            "regularisation": self.regularisation,
            "temperature": self.temperature,
        }

    def _log_weights_cluster(self, request: SelectionRequest, eligible: np.ndarray) -> np.ndarray:
        k = request.semantic_map.k
        clusters = request.pool.clusters[eligible]
        target = smoothed_shares(request.usage_counts(), 0.5)
        pool = smoothed_shares(np.bincount(clusters, minlength=k).astype(np.float64), 0.5)
        return np.log(target / pool)[clusters]

    def _log_weights_logistic(
        self, request: SelectionRequest, eligible: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression

        target = request.target_vectors
        assert target is not None
        sample = eligible
        if len(eligible) > self.pool_sample:
            sample = np.sort(rng.choice(eligible, size=self.pool_sample, replace=False))
        transform = request.semantic_map.transform
        features = np.concatenate([transform(target), transform(request.pool.vectors[sample])])
        labels = np.concatenate([np.ones(len(target)), np.zeros(len(sample))])
        model = LogisticRegression(
            C=self.regularisation, class_weight="balanced", max_iter=500, random_state=0
        )
        model.fit(features, labels)
        coef = model.coef_[0].astype(np.float32)
        intercept = float(model.intercept_[0])
        out = np.empty(len(eligible), dtype=np.float64)
        vectors = request.pool.vectors
        whole = len(eligible) == len(vectors)
        for start in range(0, len(eligible), 262_144):
            chunk = (
                vectors[start : start + 262_144]
                if whole
                else vectors[eligible[start : start + 262_144]]
            )
            scores = request.semantic_map.neutral_dot(chunk, coef)[:, 0]
            out[start : start + len(chunk)] = scores + intercept
        return out

    def select(self, request: SelectionRequest) -> Selection:
        eligible = request.eligible()
        request.check_budget(request.n_units(eligible))
        rng = request.rng()
        has_vectors = request.target_vectors is not None and len(request.target_vectors) >= 2
        density = self.density if has_vectors else "cluster"
        notes = []
        if density != self.density:
            notes.append("target given as cluster counts only: used the cluster-histogram ratio")
        if density == "logistic":
            log_w = self._log_weights_logistic(request, eligible, rng)
        else:
            log_w = self._log_weights_cluster(request, eligible)
        keys = log_w / self.temperature + rng.gumbel(size=len(eligible))
        if request.dedupes():
            # keep the highest-key member of each parallel unit, then the top of the rest
            ranked = np.lexsort((eligible, -keys))
            chosen = request.dedupe_ordered(eligible[ranked])[: request.budget]
        else:
            top = np.argpartition(-keys, request.budget - 1)[: request.budget]
            top = top[np.lexsort((top, -keys[top]))]
            chosen = eligible[top]
        clusters = request.pool.clusters[eligible]
        weight = np.exp(log_w - log_w.max())
        mass = np.bincount(clusters, weights=weight, minlength=request.semantic_map.k)
        mass = mass / mass.sum()
        cluster_weights = {int(c): float(mass[c]) for c in np.argsort(-mass)[:20] if mass[c] > 0}
        reason = (
            f"pool resampled without replacement ∝ estimated p_target/p_pool ({density} density "
            f"ratio in the embedding space, DSIR-style, Gumbel-top-k, seed {request.seed})."
        )
        return summarise(
            request,
            chosen,
            sampler=self.name,
            reason=reason,
            cluster_weights=cluster_weights,
            notes=notes,
            params=self.params(),
        )
