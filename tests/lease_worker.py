"""A drift-event worker process for tests/integration/test_worker_leases.py.

It is the real consumer (:class:`workers.runner.DriftConsumer` on Kafka), the real claim, lease
renewal and completion (:meth:`workers.adapter_worker.AdapterWorker.handle` on PostgreSQL); only
the training is replaced by a sleep of ``LEASE_TEST_JOB_S`` seconds followed by recording a
version, so the test can kill a worker in the middle of a job. Prints ``started <drift id>``
when a job begins and ``done <drift id>`` when its version is recorded.

Run: ``python -m tests.lease_worker`` with the COMPASS_* settings and LEASE_TEST_* variables.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import timedelta

from compass.config import load_settings
from compass.core.events import DriftEvent
from compass.kafka.io import KafkaMessageProducer
from compass.ports.storage import NewAdapterVersion
from compass.sql.unit_of_work import open_store
from workers.adapter_worker import AdapterWorker, WorkerOutcome, WorkerSettings
from workers.runner import DriftConsumer
from workers.stopping import Checkpoint


class SleepingWorker(AdapterWorker):
    """:class:`AdapterWorker` whose job is a sleep plus one recorded version."""

    def __init__(self, uow_factory: object, settings: WorkerSettings, job_s: float) -> None:
        self._uow_factory = uow_factory  # type: ignore[assignment]
        self.settings = settings
        self.job_s = job_s

    def _run(self, drift: DriftEvent, job_id: int, checkpoint: Checkpoint) -> WorkerOutcome:
        print(f"started {drift.drift_id}", flush=True)
        time.sleep(self.job_s)
        s = self.settings
        with self._uow_factory() as uow:
            adapter = uow.adapters.get_or_create_adapter(drift.language, s.base_model_id)
            version = uow.adapters.create_version(
                adapter.adapter_id,
                NewAdapterVersion(
                    artifact_uri=f"file:///dev/null/{drift.drift_id}",
                    artifact_sha256="0" * 64,
                    sampler="test",
                    drift_id=drift.drift_id,
                    notes=s.worker_name,
                ),
            )
            uow.jobs.complete_job(job_id, s.worker_name, version.version_id)
            uow.commit()
        print(f"done {drift.drift_id}", flush=True)
        return WorkerOutcome(drift.drift_id, "promoted", version=version.number)


def main() -> None:
    settings = load_settings()
    assert settings.database_url and settings.broker_bootstrap_servers
    store = open_store(settings.database_url)
    worker_settings = WorkerSettings(
        base_model_id="lease-test",
        data_dir=settings.data_dir,
        lease=timedelta(seconds=settings.worker_lease_s),
        max_attempts=settings.worker_max_attempts,
        worker_name=f"lease-worker-{os.getpid()}",
    )
    job_s = float(os.environ["LEASE_TEST_JOB_S"])
    producer = KafkaMessageProducer(settings.broker_bootstrap_servers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = DriftConsumer(
        settings,
        lambda: SleepingWorker(store, worker_settings, job_s),
        store,
        producer,
        group_id=os.environ["LEASE_TEST_GROUP"],
        session_timeout_ms=6000,
        wait_s=0.5,
    )
    print("ready", flush=True)
    consumer.run(stop)
    producer.close()
    store.dispose()
    sys.exit(0)


if __name__ == "__main__":
    main()
