"""serve-sync with the in-process ``peft`` engine on real components: PostgreSQL, the broker,
the relay, the shipped SmolLM2 model and adapters trained on real French text.

Each version goes the worker's way — stored and activated in one transaction with its
``adapter-updated`` outbox row — and the relay publishes it; serve-sync consumes the topic with
its own consumer group. Checked: a new adapter is loaded and answers a French prompt differently
from the base model; a duplicate message is applied once; a tampered artifact (one byte changed)
is refused and the previous adapter keeps serving; a rollback (and a roll forward) switches the
route through the same path; a rank above the engine's maximum is refused
with its reason; a restart restores the live adapter from SQL.

The same flow against a real vLLM server: tests/integration/test_vllm_serve_sync.py (slow)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from compass.bootstrap import open_publisher, outbox_relay
from compass.config import Settings
from compass.core.events import AdapterUpdated, encode
from compass.corpora.chatterbot import load_chatterbot
from compass.kafka.broker import ensure_topics, topic_specs
from compass.kafka.subscribe import Subscription, subscribe_adapter_updated
from compass.lifecycle import AdapterLifecycle
from compass.lm.training.config import AdapterTrainingConfig
from compass.lm.training.service import train_to_folder
from compass.serving import ServeSync, build_engine
from compass.serving.live import read_live_adapters
from compass.sql.unit_of_work import open_store
from tests.integration.storage_support import announce_folder

pytestmark = pytest.mark.integration

BASE = "smollm2-135m"
PROMPT = "Bonjour, comment allez-vous aujourd'hui ?"
# Its own topic: the broker is shared by the whole test session, and a new consumer group reads
# ``adapter-updated`` from the start, so other tests' announcements would reach serve-sync.
TOPIC = f"adapter-updated-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def adapters(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny adapters trained on French chat text: two of rank 8, one of rank 32."""
    texts = [r.text for r in load_chatterbot(["fr"], limit_per_language=48)]
    root = tmp_path_factory.mktemp("serve-sync-artifacts")
    out: dict[str, Path] = {}
    for name, rank, seed, part in (("a", 8, 0, texts[:24]), ("b", 8, 1, texts[24:]),
                                   ("big", 32, 2, texts[:24])):  # fmt: skip
        config = AdapterTrainingConfig(
            r=rank, alpha=2.0 * rank, steps=4, batch_size=4, max_length=32,
            learning_rate=1e-2, seed=seed, target_modules=("q_proj", "v_proj"),
        )  # fmt: skip
        out[name] = train_to_folder(
            part, root / name, base_model_id=BASE, data_dir=cache_dir, config=config,
            progress=False,
        ).path  # fmt: skip
    return out


def _consume(
    subscription: Subscription[AdapterUpdated],
    sync: ServeSync,
    delivered: list[float] | None = None,
) -> list[str]:
    """Hand every waiting message to serve-sync; the statuses, in order (``delivered`` gets
    the clock of each delivery)."""
    statuses: list[str] = []
    for received in subscription.messages(idle_timeout_s=1.5):
        if delivered is not None:
            delivered.append(time.perf_counter())
        statuses.append(sync.handle(received.event).status)
    return statuses


def test_serve_sync_on_the_peft_engine(
    adapters: dict[str, Path],
    migrated_database_url: str,
    broker_bootstrap: str,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    settings = Settings(
        broker_bootstrap_servers=broker_bootstrap, data_dir=tmp_path, topic_adapter_updated=TOPIC
    )
    ensure_topics(broker_bootstrap, topic_specs(settings))
    uow_factory = open_store(migrated_database_url)
    serving_cache = tmp_path / "serving"
    engine = build_engine("peft", base_model=BASE, data_dir=cache_dir, max_rank=16)
    sync = ServeSync(engine, serving_cache, grace_s=0.5)
    group = f"serve-sync-{uuid.uuid4().hex[:8]}"
    subscription = subscribe_adapter_updated(broker_bootstrap, group, topic=TOPIC)
    base_answer = sync.answer("fr", PROMPT)  # no route yet: the base model answers

    # 1. a new adapter: loaded, routed, answers differently from the base model
    t0 = time.perf_counter()
    first = announce_folder(uow_factory, settings, adapters["a"], topic=TOPIC)  # commit + relay
    t1 = time.perf_counter()
    delivered: list[float] = []
    assert _consume(subscription, sync, delivered) == ["applied"]
    t2 = delivered[0]
    assert sync.routes() == {"fr": first.adapter_name}
    t3 = time.perf_counter()
    first_answer = sync.answer("fr", PROMPT)
    t4 = time.perf_counter()
    assert first_answer != base_answer
    assert engine.generate(PROMPT, None) == base_answer  # the base is still reachable
    load_seconds = sync.outcomes[-1].seconds

    # 2. the relay publishes the same message again (a crash before mark_published): applied once
    publisher = open_publisher(settings)
    publisher.send(TOPIC, b"fr", encode(first))
    publisher.flush()
    publisher.close()
    assert _consume(subscription, sync) == []
    assert subscription.stats.duplicates == 1 and sync.stats.applied == 1

    # 3. a tampered artifact: one byte changed after the manifest was written
    tampered = shutil.copytree(adapters["b"], tmp_path / "tampered")
    weights = tampered / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    second = announce_folder(uow_factory, settings, tampered, topic=TOPIC)
    weights.write_bytes(bytes(data))
    assert _consume(subscription, sync) == ["refused"]
    assert sync.outcomes[-1].reason.startswith("artifact_corrupt: adapter_model.safetensors")
    assert sync.routes() == {"fr": first.adapter_name}
    assert sync.answer("fr", PROMPT) == first_answer  # the previous adapter keeps serving
    assert not (serving_cache / second.adapter_name).exists()

    # 4. a good new version replaces the first one, which is unloaded after the grace period
    third = announce_folder(uow_factory, settings, adapters["b"], topic=TOPIC)
    assert _consume(subscription, sync) == ["applied"]
    assert sync.routes() == {"fr": third.adapter_name}
    assert engine.loaded() == {third.adapter_name}
    third_answer = sync.answer("fr", PROMPT)

    # 4b. rollback to the first version: one transaction writes the version change, its history
    # row and an outbox message (action=rollback); the relay publishes it and serve-sync
    # switches the route back through the same path (the first adapter was unloaded: reloaded)
    lifecycle = AdapterLifecycle(uow_factory, BASE, topic=TOPIC, actor="test")
    rolled = lifecycle.rollback("fr", "regression on support tickets", to=first.version)
    assert rolled.message.action == "rollback" and rolled.replaced == third.version
    assert rolled.message.reason == f"rollback to v{first.version}: regression on support tickets"
    publisher = open_publisher(settings)
    try:
        assert outbox_relay(uow_factory, publisher).drain() == 1
    finally:
        publisher.close()
    assert _consume(subscription, sync) == ["applied"]
    assert sync.routes() == {"fr": first.adapter_name}
    assert engine.loaded() == {first.adapter_name}
    assert sync.answer("fr", PROMPT) == first_answer
    history = [e.action for e in lifecycle.show("fr").events]
    assert history[-1] == "rollback"
    # and forward again to the third version (a rollback to a later version is allowed)
    lifecycle.rollback("fr", "fixed", to=third.version)
    publisher = open_publisher(settings)
    try:
        assert outbox_relay(uow_factory, publisher).drain() == 1
    finally:
        publisher.close()
    assert _consume(subscription, sync) == ["applied"]
    assert sync.routes() == {"fr": third.adapter_name}
    assert sync.answer("fr", PROMPT) == third_answer

    # 5. a rank above the engine's maximum (16): refused with its reason
    announce_folder(uow_factory, settings, adapters["big"], topic=TOPIC)
    assert _consume(subscription, sync) == ["refused"]
    assert sync.outcomes[-1].reason == "rank_too_high: r=32 > the engine's maximum 16"
    assert sync.routes() == {"fr": third.adapter_name}
    subscription.close()

    # 6. restart: the live version comes back from SQL. Make `third` the live one again (the
    # database still says the refused rank-32 version is live, which no restore could serve).
    with uow_factory() as uow:
        uow.adapters.activate_version(
            uow.adapters.get_or_create_adapter("fr", BASE).adapter_id, third.version
        )
        uow.commit()
    sync.close()
    restarted = ServeSync(
        build_engine("peft", base_model=BASE, data_dir=cache_dir, max_rank=16),
        serving_cache,
        grace_s=0.5,
    )
    started = time.perf_counter()
    live = read_live_adapters(migrated_database_url, BASE)
    assert [m.version for m in live] == [third.version]
    assert restarted.restore(live) == 1
    assert restarted.routes() == {"fr": live[0].adapter_name}
    assert restarted.answer("fr", PROMPT) == third_answer
    print(
        f"\nserve-sync peft: commit+relay {t1 - t0:.3f} s, first delivery (new group joins) "
        f"{t2 - t1:.3f} s, fetch+verify+load {load_seconds:.3f} s, first answer (24 tokens) "
        f"{t4 - t3:.3f} s; restore from SQL {time.perf_counter() - started:.3f} s"
    )
    restarted.close()

    # the commands: `compass routes` reads SQL; `compass serve-sync` restores, then handles one
    # message from the topic's start (v1's, older than the live version: skipped) and stops
    from typer.testing import CliRunner

    from compass.cli import app

    env = {"COMPASS_DATABASE_URL": migrated_database_url, "COMPASS_DATA_DIR": str(cache_dir),
           "COMPASS_BROKER_BOOTSTRAP_SERVERS": broker_bootstrap,
           "COMPASS_SERVING_CACHE_DIR": str(tmp_path / "cli-cache"),
           "COMPASS_SERVING_GROUP_ID": f"{group}-cli",
           "COMPASS_TOPIC_ADAPTER_UPDATED": TOPIC}  # fmt: skip
    routes = CliRunner().invoke(app, ["routes"], env=env)
    assert routes.exit_code == 0, routes.output
    assert json.loads(routes.output.strip().splitlines()[-1]) == {"fr": third.adapter_name}
    run = CliRunner().invoke(app, ["serve-sync", "--port", "0", "--max-messages", "1"], env=env)
    assert run.exit_code == 0, run.output
    summary = json.loads(run.output.strip().splitlines()[-1])
    assert summary == {"routes": {"fr": third.adapter_name}, "applied": 1, "refused": {}}
