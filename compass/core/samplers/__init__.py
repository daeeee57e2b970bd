"""Samplers: ``get_sampler(name).select(SelectionRequest(...)) -> Selection``.

Built in: ``compass`` (gap-weighted, the paper's method), ``linguistic`` (URIEL distance),
``random``, ``all``, ``importance`` (DSIR-style embedding-space importance resampling) and
``hybrid`` (COMPASS across clusters, related languages preferred within them).
"""

from compass.core.samplers import compass_sampler, hybrid, importance, linguistic, simple
from compass.core.samplers.base import (
    BudgetError,
    Pool,
    Sampler,
    Selection,
    SelectionReport,
    SelectionRequest,
    available_samplers,
    get_sampler,
    register_sampler,
)
from compass.core.samplers.compass_sampler import CompassSampler
from compass.core.samplers.hybrid import HybridSampler
from compass.core.samplers.importance import ImportanceSampler
from compass.core.samplers.linguistic import LinguisticSampler, language_distance
from compass.core.samplers.simple import AllSampler, RandomSampler

__all__ = [
    "AllSampler",
    "BudgetError",
    "CompassSampler",
    "HybridSampler",
    "ImportanceSampler",
    "LinguisticSampler",
    "Pool",
    "RandomSampler",
    "Sampler",
    "Selection",
    "SelectionReport",
    "SelectionRequest",
    "available_samplers",
    "compass_sampler",
    "get_sampler",
    "hybrid",
    "importance",
    "language_distance",
    "linguistic",
    "register_sampler",
    "simple",
]
