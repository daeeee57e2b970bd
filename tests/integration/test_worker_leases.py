"""Training-job leases on PostgreSQL, and several adapter workers sharing the job table.

* the lease is renewed while a job runs longer than the lease (:class:`workers.leases.LeaseKeeper`),
  and a job whose holder stops renewing is taken over, with ``lease of <worker> expired`` kept as
  its last error; claims are bounded (``max_attempts``);
* a cooperative stop (SIGTERM) gives the job back without spending an attempt, however often;
  crashes (an exception, an expired lease) spend them and fail the job at ``max_attempts``;
* two worker processes (``python -m tests.lease_worker``: the real Kafka consumer, claim, lease
  renewal and completion; the training replaced by a 4 s sleep) and three drift events on a
  two-partition ``drift-events`` topic of the embedded broker: every job is done exactly once; a
  worker killed with SIGKILL in the middle of a job → its lease expires → the other worker
  finishes that job → one version per drift event.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from compass.config import Settings
from compass.core.errors import DataError
from compass.core.events import DriftEvent, encode
from compass.kafka.broker import ensure_topics, topic_specs
from compass.ports.storage import TrainingJob
from compass.sql.unit_of_work import SqlStore, open_store
from workers.leases import LeaseKeeper, held_elsewhere
from workers.stopping import JobStopped, give_back

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LANGUAGES = ("fr", "de", "es")


_WINDOWS = iter(range(10_000))


def _drift(language: str) -> DriftEvent:
    """A drift event of its own window (one drift event is stored per language and window)."""
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC) + timedelta(hours=next(_WINDOWS))
    return DriftEvent(
        drift_id=uuid.uuid4(),
        language=language,
        window_start=start,
        window_end=start + timedelta(hours=1),
        statistic=0.3,
        threshold=0.1,
        n_events=500,
        n_sampled=500,
    )


@pytest.fixture(scope="module")
def store(migrated_database_url: str) -> Iterator[SqlStore]:
    s = open_store(migrated_database_url)
    yield s
    s.dispose()


def _recorded(store: SqlStore, language: str = "fr") -> DriftEvent:
    drift = _drift(language)
    with store() as uow:
        uow.drift.record_drift_event(drift)
        uow.commit()
    return drift


def _claim(store: SqlStore, drift: DriftEvent, worker: str, lease_s: float, **kw: int):  # type: ignore[no-untyped-def]
    with store() as uow:
        job = uow.jobs.claim_job(drift.drift_id, worker, timedelta(seconds=lease_s), **kw)
        uow.commit()
    return job


def test_a_renewed_lease_outlives_its_length_and_a_dead_one_is_taken_over(
    store: SqlStore,
) -> None:
    drift = _recorded(store)
    job = _claim(store, drift, "w1", 0.6)
    assert job is not None and job.attempts == 1
    with LeaseKeeper(store, job.job_id, "w1", timedelta(seconds=0.6)) as keeper:
        time.sleep(2.0)  # three lease lengths: alive only because it is renewed
        assert _claim(store, drift, "w2", 0.6) is None
        assert held_elsewhere(store, drift.drift_id)
    assert keeper.renewals >= 3 and not keeper.lost
    time.sleep(0.8)  # w1 "died": nobody renews
    taken = _claim(store, drift, "w2", 30)
    assert taken is not None and taken.worker == "w2" and taken.attempts == 2
    assert taken.last_error == "lease of w1 expired"
    with store() as uow:  # w1 can no longer renew, nor complete
        assert not uow.jobs.renew_lease(job.job_id, "w1", timedelta(seconds=1))
        uow.commit()


def test_a_lost_lease_is_noticed_by_the_keeper(store: SqlStore) -> None:
    drift = _recorded(store)
    job = _claim(store, drift, "w1", 0.3)
    assert job is not None
    time.sleep(0.4)
    assert _claim(store, drift, "w2", 30) is not None  # taken over before w1 renewed
    with LeaseKeeper(store, job.job_id, "w1", timedelta(seconds=0.3)) as keeper:
        time.sleep(0.5)
    assert keeper.lost


def test_attempts_are_bounded_and_the_last_error_kept(store: SqlStore) -> None:
    drift = _recorded(store)
    first = _claim(store, drift, "w1", 30, max_attempts=2)
    assert first is not None
    with store() as uow:
        uow.jobs.fail_job(first.job_id, "w1", "RuntimeError: CUDA out of memory")
        uow.commit()
    second = _claim(store, drift, "w2", 0.2, max_attempts=2)
    assert second is not None and second.last_error == "RuntimeError: CUDA out of memory"
    time.sleep(0.3)  # w2 dies mid-job
    assert _claim(store, drift, "w3", 30, max_attempts=2) is None  # two attempts used
    with store() as uow:
        job = uow.jobs.get_job(drift.drift_id)
    assert job is not None and job.status == "failed" and job.attempts == 2
    assert job.last_error == "lease of w2 expired" and job.finished_at is not None


def test_a_stopped_job_keeps_its_attempts_and_a_crashed_one_spends_them(store: SqlStore) -> None:
    """Five cooperative stops (``workers.stopping.give_back``, as on SIGTERM) leave the job
    queued with no attempt spent; then three crashes — two exceptions (``fail_job``) and a
    worker that died (its lease expired) — fail it, as before."""
    max_attempts = Settings.model_fields["worker_max_attempts"].default
    assert max_attempts == 3
    drift = _recorded(store)

    def job() -> TrainingJob:
        with store() as uow:
            found = uow.jobs.get_job(drift.drift_id)
        assert found is not None
        return found

    for n in range(5):  # five rolling deploys, each stopping the job mid-training
        claimed = _claim(store, drift, f"deploy-{n}", 30, max_attempts=max_attempts)
        assert claimed is not None and claimed.attempts == 1
        give_back(store, claimed.job_id, f"deploy-{n}", JobStopped(f"after training step {n}"))
        stopped = job()
        assert (stopped.status, stopped.attempts, stopped.lease_until) == ("queued", 0, None)
        assert stopped.last_error == f"stopped: after training step {n}"
    with pytest.raises(DataError, match="not held"):  # a stop cannot give back twice
        give_back(store, claimed.job_id, "deploy-4", JobStopped("again"))

    for n in range(2):  # two crashes by an exception
        claimed = _claim(store, drift, f"crash-{n}", 30, max_attempts=max_attempts)
        assert claimed is not None and claimed.attempts == n + 1
        with store() as uow:
            uow.jobs.fail_job(claimed.job_id, f"crash-{n}", "RuntimeError: CUDA out of memory")
            uow.commit()
        assert (job().status, job().attempts) == ("queued", n + 1)
    killed = _claim(store, drift, "killed", 0.2, max_attempts=max_attempts)  # SIGKILLed
    assert killed is not None and killed.attempts == 3
    time.sleep(0.3)  # nobody renews
    assert _claim(store, drift, "next", 30, max_attempts=max_attempts) is None
    failed = job()
    assert (failed.status, failed.attempts) == ("failed", 3)
    assert failed.last_error == "lease of killed expired" and failed.finished_at is not None


# ------------------------------------------------------------------------ two worker processes
def _reader(process: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.strip())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_two_workers_do_each_job_once_and_survive_a_sigkill(
    store: SqlStore, broker_bootstrap: str, migrated_database_url: str, tmp_path: Path
) -> None:
    prefix = f"leases-{uuid.uuid4().hex[:8]}"
    env = {
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": broker_bootstrap,
        "COMPASS_DATABASE_URL": migrated_database_url,
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_DRIFT_EVENTS_PARTITIONS": "2",
        "COMPASS_WORKER_LEASE_S": "2",
        "COMPASS_DATA_DIR": str(tmp_path),
        "COMPASS_LOG_LEVEL": "WARNING",
        "LEASE_TEST_JOB_S": "4",
        "LEASE_TEST_GROUP": f"{prefix}-workers",
    }
    settings = Settings(**{k[8:].lower(): v for k, v in env.items() if k.startswith("COMPASS_")})  # type: ignore[arg-type]
    ensure_topics(broker_bootstrap, topic_specs(settings))
    workers: list[subprocess.Popen[str]] = []
    outputs: list[list[str]] = []
    try:
        for _ in range(2):
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.lease_worker"],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            workers.append(process)
            outputs.append([])
            _reader(process, outputs[-1])
        deadline = time.monotonic() + 60
        while not all("ready" in out for out in outputs) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(8)  # both consumers joined the group and got one partition each
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=broker_bootstrap, acks="all")
        drifts = [_drift(language) for language in LANGUAGES]
        for partition, drift in zip((0, 1, 0), drifts, strict=True):
            producer.send(
                settings.topic_drift_events,
                key=drift.language.encode(),
                value=encode(drift),
                partition=partition,
            )
        producer.flush()
        producer.close()

        # kill the first worker that starts a job, in the middle of it
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            for index, out in enumerate(outputs):
                if any(line.startswith("started") for line in out):
                    victim = index
                    break
            time.sleep(0.1)
        assert victim is not None, outputs
        time.sleep(1.0)
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(timeout=10)
        killed_job = next(line.split()[1] for line in outputs[victim] if line.startswith("started"))

        def finished() -> int:
            with store() as uow:
                return sum(
                    1
                    for d in drifts
                    if (job := uow.jobs.get_job(d.drift_id)) is not None
                    and job.status == "succeeded"
                )

        deadline = time.monotonic() + 90
        while finished() < len(drifts) and time.monotonic() < deadline:
            survivor = workers[1 - victim]
            assert survivor.poll() is None, outputs[1 - victim]
            time.sleep(0.5)
        assert finished() == len(drifts), outputs
    finally:
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    ids = [str(d.drift_id) for d in drifts]
    with store() as uow:
        conn = uow.connection  # type: ignore[attr-defined]
        versions = dict(
            conn.execute(
                text(
                    "SELECT drift_id::text, count(*) FROM adapter_versions "
                    "WHERE drift_id::text = ANY(:ids) GROUP BY drift_id"
                ),
                {"ids": ids},
            ).all()
        )
        jobs = {str(d.drift_id): uow.jobs.get_job(d.drift_id) for d in drifts}
    assert versions == dict.fromkeys(ids, 1)  # one version per drift event
    survivor_out = outputs[1 - victim]
    assert f"done {killed_job}" in survivor_out  # the survivor finished the killed job
    killed = jobs[killed_job]
    assert killed is not None and killed.attempts == 2
    for drift_id, job in jobs.items():
        assert job is not None and job.status == "succeeded"
        if drift_id != killed_job:
            assert job.attempts == 1  # nobody ran a job twice
