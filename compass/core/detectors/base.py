"""Drift detectors: the protocol, the result, the shared configuration and the registry.

A detector works in the style of alibi-detect: ``fit(reference)`` once, then
``score(window) -> DriftResult`` per window; the decision (``is_drift``) is part of the result
and the multiple-testing correction is one of the detector's parameters (:mod:`.correction`).
Detectors are registered under a name with :func:`register_detector` and built by name with
:func:`get_detector`; the stream picks one with ``COMPASS_DRIFT_DETECTOR`` (default ``"js"``).

The stream builds every detector with the same keyword arguments, so a registered detector must
accept them: ``n_clusters`` (the semantic map's ``k``) and the fields of :class:`DriftConfig`
(``false_alarm_rate``, ``n_tests``, ``correction``, ``min_events``, ``seed``). Counts are
``{cluster: count}`` mappings or dense ``(k,)`` arrays; a window's counts are of *sampled*
(embedded) events, ``n_events`` counts every event and ``sample_rate`` is the embedded share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self, TypeVar

import numpy as np

from compass.core.detectors.correction import Correction, check_correction, per_test_level
from compass.core.errors import ConfigError

Counts = Mapping[int, float] | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class DriftConfig:
    """What every detector is told. ``false_alarm_rate`` (α) is per evaluation round across all
    ``n_tests`` languages under ``correction``; ``min_events`` counts *sampled* events (fewer:
    no verdict); ``top_k`` bounds the cluster changes reported. Raises :class:`ValueError`."""

    false_alarm_rate: float = 0.01
    n_tests: int = 1
    correction: Correction = "bonferroni"
    min_events: int = 50
    top_k: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise ValueError("false_alarm_rate must be in (0, 1)")
        if self.n_tests < 1 or self.min_events < 1:
            raise ValueError("n_tests and min_events must be ≥ 1")
        check_correction(self.correction)

    @classmethod
    def from_expected_run_time(cls, windows_between_false_alarms: float, **kw: Any) -> Self:
        """Configure by the expected number of rounds between two false alarms (1 / α)."""
        if windows_between_false_alarms <= 1:
            raise ValueError("expected run time must exceed one window")
        return cls(false_alarm_rate=1.0 / windows_between_false_alarms, **kw)

    @property
    def test_level(self) -> float:
        """The level each single language is tested at (:func:`.correction.per_test_level`)."""
        return per_test_level(self.correction, self.false_alarm_rate, self.n_tests)


@dataclass(frozen=True)
class ClusterShift:
    """How much one cluster's share moved (shares in [0, 1]), and its part of the statistic."""

    cluster: int
    reference_share: float
    window_share: float
    delta: float
    contribution: float


@dataclass(frozen=True)
class DriftResult:
    """A scored window. ``is_drift`` is the decision; the rest says why.

    ``threshold`` is NaN when the window had too few events to be judged
    (``reason == "insufficient_events"``); ``n_effective`` is the sampled size divided by the
    (thinned) dispersion; ``top_changes`` are ordered by the size of the share change.
    """

    statistic: float
    threshold: float
    p_value: float
    n_events: int
    n_sampled: int
    n_effective: float
    sample_rate: float
    dispersion: float
    is_drift: bool
    reason: Literal["drift", "no_drift", "insufficient_events"]
    top_changes: tuple[ClusterShift, ...] = field(default_factory=tuple)


class DriftDetector(Protocol):
    """``fit(reference)`` then ``score(window)``; ``fit`` replaces the state, ``score`` never
    changes it. ``exact=True`` marks a reference given as shares (an adapter's training
    coverage) rather than a finite sample; ``blocks`` are the reference's ``(blocks, k)``
    consecutive sub-window counts (for burstiness), counted at ``blocks_sample_rate``.

    A detector that tests the embeddings themselves sets the class attribute
    ``needs_embeddings = True``; the stream then also passes ``embeddings=`` (an ``(n, dim)``
    array of the events' vectors, read from the vector store by event time) to ``fit`` and
    ``score``. Count-only detectors (no such attribute) never receive it."""

    config: DriftConfig

    def fit(
        self,
        reference: Counts,
        *,
        exact: bool = False,
        blocks: np.ndarray | None = None,
        blocks_sample_rate: float = 1.0,
    ) -> Self: ...

    def score(
        self, window: Counts, *, n_events: int | None = None, sample_rate: float = 1.0
    ) -> DriftResult: ...


D = TypeVar("D")
_DETECTORS: dict[str, Callable[..., DriftDetector]] = {}


def register_detector(name: str) -> Callable[[type[D]], type[D]]:
    """Class decorator: make a detector available to :func:`get_detector` under ``name``."""

    def decorate(cls: type[D]) -> type[D]:
        _DETECTORS[name] = cls  # type: ignore[assignment]
        return cls

    return decorate


def known_detectors() -> list[str]:
    """Names registered so far, built-ins included, sorted."""
    import compass.core.detectors  # noqa: F401  (registers the built-in detectors)

    return sorted(_DETECTORS)


def get_detector(name: str, **config: Any) -> DriftDetector:
    """A new, unfitted detector registered as ``name``, built with ``config`` (see the module
    docstring for what the stream passes). :class:`ConfigError` for an unknown name (naming
    the known ones) or parameters the detector does not take."""
    known = known_detectors()
    if name not in _DETECTORS:
        raise ConfigError(f"unknown drift detector {name!r}; choose from {known}")
    try:
        return _DETECTORS[name](**config)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for drift detector {name!r}: {exc}") from None
