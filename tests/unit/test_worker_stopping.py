"""The worker's cooperative stop (workers/stopping.py): a checkpoint raises only once told to."""

from __future__ import annotations

import threading

import pytest

from compass import metrics
from workers.stopping import Checkpoint, JobStopped


def test_a_checkpoint_without_a_stop_never_raises() -> None:
    Checkpoint().check("anywhere")
    Checkpoint().on_step(1, 3, 2.5)


def test_a_set_stop_raises_at_the_next_step_and_says_where() -> None:
    stop = threading.Event()
    checkpoint = Checkpoint(stop)
    checkpoint.on_step(1, 3, 2.5)
    stop.set()
    with pytest.raises(JobStopped, match=r"worker stopping \(after training step 2 of 3\)"):
        checkpoint.on_step(2, 3, 2.4)
    # the step was still reported before stopping
    assert metrics.REGISTRY.get_sample_value("compass_worker_training_completed_steps") == 2
    with pytest.raises(JobStopped, match=r"\(before training\)"):
        checkpoint.check("before training")
