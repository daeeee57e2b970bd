"""The experiment of docs/results.md: COMPASS against the usual ways of choosing auxiliary data,
and COMPASS-ECDA against the usual continual updates, on real multilingual text."""

from compass.lab.experiment.config import ExperimentConfig, full_config, quick_config
from compass.lab.experiment.report import write_report
from compass.lab.experiment.runner import run_experiment
from compass.lab.experiment.stats import Comparison, cohens_d, permutation_test

__all__ = [
    "Comparison",
    "ExperimentConfig",
    "cohens_d",
    "full_config",
    "permutation_test",
    "quick_config",
    "run_experiment",
    "write_report",
]
