"""Keep a training job's lease alive while the job runs, and wait out another worker's lease.

A job is claimed for a short lease (``COMPASS_WORKER_LEASE_S``) that a background thread renews
every third of it, so a worker that dies (SIGKILL, lost machine) stops renewing and its job can
be taken over within one lease, while a live worker keeps its job however long training takes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import structlog

from compass import metrics
from compass.ports.storage import UnitOfWork

log = structlog.get_logger(__name__)


class LeaseKeeper:
    """``with LeaseKeeper(...):`` renews ``worker``'s lease on ``job_id`` every ``lease / 3``
    until the block ends. ``lost`` turns true when a renewal finds the job no longer held (the
    completion will then fail with "lease lost"); a database error is logged and retried at
    the next tick (the lease still has two thirds to run). ``on_renew`` is called after each
    successful renewal (the worker's liveness heartbeat)."""

    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        job_id: int,
        worker: str,
        lease: timedelta,
        on_renew: Callable[[], None] | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self.job_id = job_id
        self.worker = worker
        self.lease = lease
        self._on_renew = on_renew
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compass-lease", daemon=True)
        self.lost = False
        self.renewals = 0

    def _run(self) -> None:
        interval = max(self.lease.total_seconds() / 3.0, 0.05)
        while not self._stop.wait(interval):
            try:
                with self._uow_factory() as uow:
                    held = uow.jobs.renew_lease(self.job_id, self.worker, self.lease)
                    uow.commit()
            except Exception as exc:
                log.warning("worker.lease_renewal_failed", job=self.job_id, error=repr(exc)[:200])
                continue
            if not held:
                self.lost = True
                log.error("worker.lease_lost", job=self.job_id, worker=self.worker)
                return
            self.renewals += 1
            metrics.WORKER_LEASE_RENEWALS.inc()
            if self._on_renew is not None:
                self._on_renew()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)


def held_elsewhere(uow_factory: Callable[[], UnitOfWork], drift_id: uuid.UUID) -> bool:
    """Whether the drift event's job is running under some worker's lease (live or expired
    but not yet taken over): a redelivered event must then wait, not be committed as done."""
    with uow_factory() as uow:
        job = uow.jobs.get_job(drift_id)
    return job is not None and job.status == "running"
