"""A cooperative stop for a running job: ``compass worker`` sets an event on SIGTERM, and the job
checks it between its stages and after every training step (:class:`Checkpoint`).

A job that finds the event set raises :class:`JobStopped` there; :class:`AdapterWorker
<workers.adapter_worker.AdapterWorker>` then gives the job back — queued again, its lease cleared,
no artifact or version written, and the claim not counted as one of its attempts — and the runner
leaves the drift event's offset uncommitted, so the event is delivered again (to another worker of
the group, or to this one after a restart) and the job is claimed and trained from the start. A
stop therefore costs at most one training step (or one evaluation pass) of waiting, instead of the
whole job, and however many deploys stop a job, it is never marked ``failed`` for them; a crash
(an exception, or SIGKILL: the lease expires) still spends an attempt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from compass import metrics
from compass.ports.storage import UnitOfWork

log = structlog.get_logger(__name__)


class JobStopped(Exception):
    """The worker was told to stop while a job ran; the message says where it stopped."""


@dataclass(frozen=True)
class Checkpoint:
    """Where a job may stop: ``check`` raises :class:`JobStopped` once ``stop`` is set (never
    without one); ``on_step`` is the training loop's step callback (it also reports the step to
    the metrics, as the worker's plain callback does)."""

    stop: threading.Event | None = None

    def check(self, where: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise JobStopped(f"worker stopping ({where})")

    def on_step(self, step: int, steps: int, loss: float) -> None:
        metrics.training_step(step, steps, loss)
        self.check(f"after training step {step} of {steps}")


def give_back(
    uow_factory: Callable[[], UnitOfWork], job_id: int, worker: str, stopped: JobStopped
) -> None:
    """Queue ``worker``'s job ``job_id`` again with its lease cleared (claimable at once; the
    claim is not counted as one of its attempts) and ``last_error`` ``stopped: <where>``; raises
    :class:`~compass.core.errors.DataError` when the lease was already lost."""
    metrics.job_stage("idle")
    with uow_factory() as uow:
        uow.jobs.release_job(job_id, worker, f"stopped: {stopped}")
        uow.commit()
    log.info("worker.job_stopped", job=job_id, reason=str(stopped))
