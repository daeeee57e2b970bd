"""Drift detectors: ``get_detector(name, **config).fit(reference).score(window) -> DriftResult``.

Built in: ``js`` (Jensen–Shannon divergence with a threshold calibrated for the window's size,
burstiness and sampling rate, :mod:`.js`) and ``mmd`` (a kernel two-sample test on the
embeddings themselves, :mod:`.mmd`; it has ``needs_embeddings = True``, so the stream passes the
reference's and the window's embeddings as ``embeddings=`` to ``fit`` and ``score``). Register
another with ``@register_detector("name")`` and select it with ``COMPASS_DRIFT_DETECTOR``; the
multiple-testing correction is a parameter of every detector (:mod:`.correction`).
"""

from compass.core.detectors import js, mmd
from compass.core.detectors.base import (
    ClusterShift,
    Counts,
    DriftConfig,
    DriftDetector,
    DriftResult,
    get_detector,
    known_detectors,
    register_detector,
)
from compass.core.detectors.correction import CORRECTIONS, Correction, per_test_level, reject
from compass.core.detectors.js import (
    JSDriftConfig,
    JSDriftDetector,
    estimate_dispersion,
    thinned_dispersion,
)
from compass.core.detectors.mmd import MMDDriftConfig, MMDDriftDetector

__all__ = [
    "CORRECTIONS",
    "ClusterShift",
    "Correction",
    "Counts",
    "DriftConfig",
    "DriftDetector",
    "DriftResult",
    "JSDriftConfig",
    "JSDriftDetector",
    "MMDDriftConfig",
    "MMDDriftDetector",
    "estimate_dispersion",
    "get_detector",
    "js",
    "known_detectors",
    "mmd",
    "per_test_level",
    "register_detector",
    "reject",
    "thinned_dispersion",
]
