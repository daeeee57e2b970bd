"""An adapter-worker process for tests/reliability/test_process_faults_loop.py: the real
:class:`workers.adapter_worker.AdapterWorker` (claim, lease, COMPASS selection, LoRA training of
the shipped SmolLM2, evaluation, gate, one transaction for version + outbox) handling one drift
event, on a world that :func:`seed_world` stored beforehand (:mod:`compass.lab.usage_world`:
French chatterbot usage counted in PostgreSQL and stored as points; an auxiliary pool of five
other languages).

The only addition is a trace line, ``training started``, printed when the LoRA training begins,
so the test can kill the process mid-training. SIGTERM stops the job as ``compass worker`` does
(an event the job checks between training steps). Prints ``outcome <status> <version> <reason>``
at the end and exits 0 for ``promoted``, ``rejected`` and ``stopped``.

Run: ``python -m tests.reliability.worker_process`` with ``COMPASS_DATABASE_URL``,
``RELIABILITY_ROOT`` (the world's folder), ``RELIABILITY_DRIFT`` (the drift event, JSON) and
``COMPASS_TEST_CACHE_DIR``; ``RELIABILITY_TRAINING_STEPS`` (default 6) lengthens the training.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from compass.lab.usage_world import LANGUAGE, T0, WINDOW

__all__ = ["LANGUAGE", "T0", "WINDOW", "seed_world"]

BASE_MODEL = "smollm2-135m"
LEASE_S = 6.0


def seed_world(database_url: str, root: Path, cache_dir: Path) -> int:
    """Store the semantic map, the usage counts and the usage points; return the map version.
    (The same world as tests/integration/test_adapter_worker.py.)"""
    from compass.lab.usage_world import build_usage_world

    world = build_usage_world(database_url, root, cache_dir)
    world.store.close()
    world.uow_factory.dispose()
    return world.map_version


def main() -> None:
    from compass.bootstrap import open_artifact_store, sampler_for
    from compass.config import Settings
    from compass.core.events import DriftEvent
    from compass.core.gate import PromotionGate
    from compass.core.samplers.base import Pool
    from compass.lab.usage_world import world_texts
    from compass.lm import training
    from compass.lm.training.config import AdapterTrainingConfig
    from compass.qdrant.store import QdrantEdgeStore
    from compass.sql.unit_of_work import open_store
    from workers.adapter_worker import AdapterWorker, WorkerSettings
    from workers.usage_texts import VectorStoreUsageTexts

    root = Path(os.environ["RELIABILITY_ROOT"])
    cache_dir = Path(os.environ["COMPASS_TEST_CACHE_DIR"])
    drift = DriftEvent.model_validate_json(os.environ["RELIABILITY_DRIFT"])
    uow_factory = open_store(os.environ["COMPASS_DATABASE_URL"])
    texts = world_texts(cache_dir)
    with uow_factory() as uow:
        record = uow.semantic_maps.active_semantic_map()
    assert record is not None
    pool = Pool.from_records(texts.aux, texts.aux_vectors, record.semantic_map)
    store = QdrantEdgeStore(root / "events", dim=texts.embedder.dim)
    services = Settings(artifacts_dir=root / "adapters")
    worker = AdapterWorker(
        uow_factory,
        pool,
        VectorStoreUsageTexts(store),
        WorkerSettings(
            base_model_id=BASE_MODEL,
            data_dir=cache_dir,
            budget=8,
            eval_texts=8,  # the gate decides on 8 held-out texts at least
            training=AdapterTrainingConfig(  # small: the machine is shared and slow
                steps=int(os.environ.get("RELIABILITY_TRAINING_STEPS", "6")),
                batch_size=2,
                max_length=24,
                learning_rate=2e-3,
                fisher_samples=2,
            ),
            gate=PromotionGate(min_gain=-10.0, max_forgetting=10.0),
            lease=timedelta(seconds=LEASE_S),
            max_attempts=5,
            worker_name=f"reliability-worker-{os.getpid()}",
        ),
        sampler=sampler_for(services),
        artifacts=open_artifact_store(services),
    )
    train = training.train_adapter

    def traced(*args: Any, **kwargs: Any) -> Any:
        print("training started", flush=True)
        return train(*args, **kwargs)

    training.train_adapter = traced  # a trace line only; the training is the real one
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # as compass worker does
    outcome = worker.handle(drift, stop)
    print(f"outcome {outcome.status} {outcome.version} {outcome.reason}", flush=True)
    store.close()
    uow_factory.dispose()
    sys.exit(0 if outcome.status in ("promoted", "rejected", "stopped") else 1)


if __name__ == "__main__":
    main()
