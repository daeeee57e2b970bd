"""The two trivial baselines: uniform random sampling and all the data."""

from __future__ import annotations

import numpy as np

from compass.core.samplers.base import (
    Sampler,
    Selection,
    SelectionRequest,
    register_sampler,
    summarise,
)


@register_sampler("random")
class RandomSampler(Sampler):
    """Uniformly at random, without replacement, from the eligible pool (one random member of
    each parallel unit is eligible, so units are equally likely whatever their size)."""

    def select(self, request: SelectionRequest) -> Selection:
        eligible = request.eligible()
        rng = request.rng()
        if request.dedupes():
            eligible = request.representatives(eligible, rng.random(len(eligible)))
        request.check_budget(len(eligible))
        chosen = rng.choice(eligible, size=request.budget, replace=False)
        return summarise(
            request,
            chosen,
            sampler=self.name,
            reason=f"{request.budget} items drawn uniformly at random (seed {request.seed}).",
        )


@register_sampler("all")
class AllSampler(Sampler):
    """Every eligible pool item (the paper's all-data mixing baseline); ignores the budget.
    Of each parallel unit only the first item (pool order) is kept."""

    def select(self, request: SelectionRequest) -> Selection:
        everything = request.eligible()
        eligible = request.representatives(everything)
        notes = []
        if len(eligible) < len(everything):
            notes.append(
                f"{len(everything) - len(eligible)} translation(s) of texts already included "
                "left out (one item per parallel key)"
            )
        if request.budget != len(eligible):
            notes.append(f"budget {request.budget} ignored: 'all' takes all {len(eligible)} items")
        return summarise(
            request,
            np.asarray(eligible, dtype=np.int64),
            sampler=self.name,
            reason="all eligible auxiliary data, mixed without selection.",
            notes=notes,
        )
