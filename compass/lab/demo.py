"""The main job: the whole continual COMPASS-ECDA loop, twice, on the embedded services.

1. Start from a clean slate (:func:`reset_demo`): the demo's tables, vector collection, adapters
   and logs of an earlier run are removed, so a second ``make demo`` tells the same story.
2. Fetch the gettext catalogs it reads (``apt-get download``, once), build the multilingual
   auxiliary pool (embedded once, cached), fit the semantic map and activate it.
3. Start the relay (``compass relay``) and the stream app (``compass streams``) as their own
   processes, produce French, German and Spanish usage: French moves from software messages to
   names (countries, currencies, keyboard layouts) — the stream app counts, dead-letters the
   malformed messages and detects the drift.
4. Run the adapter worker (``compass worker``) as its own process: COMPASS-sampled auxiliary
   data, the first French adapter (v1) trained, evaluated, gated, promoted and announced
   (``adapter-updated``); serve-sync consumes it and the new adapter answers a prompt.
5. A stable stretch (French keeps to the names: no drift against v1), then French moves again
   (database-server messages): a second drift, and the worker *continues* v1 into v2 (replay +
   EWC) with the gate's evidence. German and Spanish stay stable throughout.
6. Stop every process it started (also on Ctrl-C and on errors), print the summary and write
   the report (:mod:`compass.lab.report`, where present).

The embedded vector store (Qdrant Edge) is one process's at a time (its write-ahead log is
locked), so the stream app is paused while the worker reads the drift window's texts from it;
with a Qdrant server both could run at once. Everything the display shows is read from
PostgreSQL and the processes' metrics endpoints (:mod:`compass.lab.demo_state`).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from compass.config import Settings
from compass.core.errors import CompassError, ConfigError
from compass.lab.demo_processes import ProcessGroup, sigterm_as_interrupt
from compass.lab.demo_state import DemoSnapshot, StateReader
from compass.lab.scenario import (
    SECOND_SHIFT_TOPICS,
    SHIFTED_TOPICS,
    STABLE_TOPICS,
    Message,
    Phase,
    interleave,
    malformed_messages,
    phased_stream,
    topic_pools,
)

log = structlog.get_logger(__name__)

AUX_LANGUAGES = ("de", "es", "it", "pt", "nl", "pl", "sv")
STREAM_LANGUAGES = ("fr", "de", "es")
WINDOW = timedelta(seconds=60)
PROMPTS = {
    1: "Quelle est la monnaie officielle de la Suisse ?",
    2: "Impossible de se connecter au serveur de base de données :",
}


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run: events per window and language, and the worker's training."""

    per_window: dict[str, int]
    steps: int
    budget: int
    eval_texts: int
    max_length: int = 48
    malformed: int = 7  # per act: one of each kind in compass.lab.scenario.MALFORMED_KINDS

    def acts(self) -> tuple[list[Phase], list[Phase]]:
        """Two acts of window-aligned phases: before and after the first adapter is live."""
        stable: dict[str, tuple[str, ...]] = dict.fromkeys(STREAM_LANGUAGES, STABLE_TOPICS)
        first = {**stable, "fr": SHIFTED_TOPICS}
        second = {**stable, "fr": SECOND_SHIFT_TOPICS}
        return (
            [Phase("before the shift", 4, stable), Phase("French shifts", 2, first)],
            [
                Phase("stable stretch", 3, first),
                Phase("French shifts again", 2, second),
                Phase("after the second shift", 1, second),
            ],
        )


FULL = DemoPlan(per_window={"fr": 40, "de": 20, "es": 20}, steps=16, budget=64, eval_texts=48)
QUICK = DemoPlan(per_window={"fr": 30, "de": 20, "es": 20}, steps=6, budget=32, eval_texts=24)


@dataclass
class DemoResult:
    """What a run did: the last snapshot (everything shown), what it sent, and where things are."""

    run_id: str
    snapshot: DemoSnapshot
    sent: dict[str, int]
    malformed_sent: int
    timings: dict[str, float] = field(default_factory=dict)
    log_dir: Path | None = None
    report_path: Path | None = None


def demo_settings(base: Settings, run_id: str) -> Settings:
    """Short event-time windows (60 s) so a few minutes of synthetic usage make many windows;
    the demo's own topics (per run), vector collection and artifacts folder. Every event is
    embedded (no load shedding) unless the caller forces a rate."""
    data = Path(base.data_dir)
    prefix = f"demo-{run_id}."
    return base.model_copy(
        update={
            "stream_app_id": f"compass-demo-{run_id}",
            "stream_window_seconds": int(WINDOW.total_seconds()),
            "stream_allowed_lateness_s": 5,
            "stream_session_timeout_s": 6.0,
            "drift_min_events": 20,
            "drift_reference_min_events": 60,
            "drift_false_alarm_rate": 0.001,
            "stream_embedding_cache": data / "cache" / "embeddings.sqlite",
            "stream_sample_rate": base.stream_sample_rate or 1.0,
            "qdrant_collection": "demo_events",
            "artifacts_dir": demo_dir(base) / "adapters",
            "topic_prompt_events": prefix + base.topic_prompt_events,
            "topic_prompt_events_dlq": prefix + base.topic_prompt_events_dlq,
            "topic_drift_events": prefix + base.topic_drift_events,
            "topic_adapter_updated": prefix + base.topic_adapter_updated,
        }
    )


def demo_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "demo"


def reset_demo(settings: Settings, *, configured_database: bool, reset: bool) -> None:
    """Remove what an earlier run left: the COMPASS tables (migrated back to base and up
    again), the demo's vector collection (embedded store), adapters and logs.

    On a database given by ``COMPASS_DATABASE_URL`` this needs ``reset`` (it clears every
    COMPASS table there): :class:`ConfigError` otherwise."""
    from compass.sql.migrate import downgrade, upgrade
    from compass.sql.server import describe_url

    assert settings.database_url is not None
    if configured_database and not reset:
        raise ConfigError(
            "the demo starts from a clean slate and would clear the COMPASS tables of "
            f"{describe_url(settings.database_url)}; pass --reset to allow it, or unset "
            "COMPASS_DATABASE_URL to use the embedded database"
        )
    downgrade(settings.database_url, "base")
    upgrade(settings.database_url)
    if settings.qdrant_url is None:
        shutil.rmtree(settings.embedded_dir / "qdrant" / settings.qdrant_collection, True)
    for name in ("adapters", "logs"):
        shutil.rmtree(demo_dir(settings) / name, ignore_errors=True)


def build_demo_pool(settings: Settings) -> int:
    """Fetch the gettext catalogs (once), embed the auxiliary pool (cached after the first run)
    and activate its semantic map; returns the map's version."""
    from compass.bootstrap import (
        embedding_cache_path,
        open_embedder,
        open_unit_of_work,
        open_vector_store,
    )
    from compass.corpora import load_gettext
    from compass.corpora.gettext_catalogs import fetch_gettext
    from compass.corpora.pool import build_pool, load_snapshot, pools_dir

    locale_dir = settings.gettext_dir or fetch_gettext(settings.data_dir)
    domains = [*STABLE_TOPICS, *SHIFTED_TOPICS]
    records = load_gettext(
        list(AUX_LANGUAGES), domains=domains, min_chars=12, locale_dir=locale_dir
    )
    by_key: dict[tuple[str, str | None], int] = {}
    kept = []
    for record in records:  # at most 30 texts per (language, topic): a small, balanced pool
        key = (record.language, record.topic)
        if by_key.get(key, 0) < 30 and len(record.text) <= 200:
            by_key[key] = by_key.get(key, 0) + 1
            kept.append(record)
    embedder = open_embedder(settings, cache=embedding_cache_path(settings))
    store = open_vector_store(settings, embedder, collection="pool_demo")
    try:
        build_pool(kept, embedder, pools_dir(settings.data_dir) / "demo", store=store, k=12, seed=0)
    finally:
        store.close()
    snapshot = load_snapshot(pools_dir(settings.data_dir) / "demo")
    with open_unit_of_work(settings, pool_size=1) as db, db() as uow:
        stored = uow.semantic_maps.save_semantic_map(snapshot.semantic_map, activate=True)
        uow.commit()
    log.info("demo.pool_ready", items=len(kept), map_version=stored.version)
    return stored.version


def _produce(settings: Settings, messages: list[Message]) -> None:
    from compass.bootstrap import open_publisher

    producer = open_publisher(settings)
    try:
        for message in messages:
            producer.send(settings.topic_prompt_events, message.key, message.value)
        producer.flush()
    finally:
        producer.close()


class Demo:
    """One run; :meth:`run` drives the story, ``on_update`` gets every snapshot."""

    def __init__(
        self,
        base: Settings,
        plan: DemoPlan,
        *,
        reset: bool = False,
        on_update: Callable[[DemoSnapshot], None] = lambda _: None,
        timeout_s: float = 1800,
    ) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.base = base
        self.plan = plan
        self.reset = reset
        self.on_update = on_update
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.reader: StateReader | None = None
        self.engine: Any = None  # serve-sync answering prompts, started on first use
        self._subscription: Any = None

    # ------------------------------------------------------------------ the story
    def run(self) -> DemoResult:
        from compass.bootstrap import prepare_services
        from compass.kafka.broker import ensure_topics, topic_specs
        from compass.sql.server import make_db_engine

        timings: dict[str, float] = {}
        clock = time.perf_counter()
        self._phase("starting the services (broker, PostgreSQL) from a clean slate")
        settings = prepare_services(demo_settings(self.base, self.run_id))
        assert settings.database_url and settings.broker_bootstrap_servers
        reset_demo(settings, configured_database=bool(self.base.database_url), reset=self.reset)
        ensure_topics(settings.broker_bootstrap_servers, topic_specs(settings))
        timings["services_s"] = time.perf_counter() - clock
        log_dir = demo_dir(settings) / "logs"

        clock = time.perf_counter()
        self._phase("building the auxiliary pool and the semantic map")
        build_demo_pool(settings)
        timings["pool_s"] = time.perf_counter() - clock

        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
        acts = self.plan.acts()
        pools = topic_pools(
            STREAM_LANGUAGES, (*STABLE_TOPICS, *SHIFTED_TOPICS), per_topic=30, seed=7,
            locale_dir=settings.gettext_dir,
        )  # fmt: skip
        streams = phased_stream(
            [*acts[0], *acts[1]], self.plan.per_window, start=start, window=WINDOW, pools=pools
        )
        engine = make_db_engine(settings.database_url)
        self.reader = StateReader(engine, start, list(STREAM_LANGUAGES))
        sent = dict.fromkeys(STREAM_LANGUAGES, 0)
        bad_total = 0
        try:
            with sigterm_as_interrupt(), ProcessGroup(settings, log_dir) as group:
                group.start("relay", "relay")
                for act, phases in enumerate(acts, start=1):
                    valid = [m for phase in streams[: len(phases)] for m in phase]
                    streams = streams[len(phases) :]
                    bad = malformed_messages(
                        self.plan.malformed, at=start, max_text_chars=settings.max_text_chars
                    )
                    bad_total += len(bad)
                    for message in valid:
                        assert message.event is not None
                        sent[message.event.language] += 1
                    clock = time.perf_counter()
                    self._stream_act(group, settings, act, phases, valid, bad, sent, bad_total)
                    timings[f"stream_{act}_s"] = time.perf_counter() - clock
                    clock = time.perf_counter()
                    self._train(group, act)
                    timings[f"worker_{act}_s"] = time.perf_counter() - clock
                clock = time.perf_counter()
                self._answer(settings, len(acts))
                timings["answer_s"] = time.perf_counter() - clock
                self._phase("done")
                group.stop_all()
                self._poll(group)
        finally:
            engine.dispose()
            if self.engine is not None:
                self._subscription.close()
                self.engine.close()
        snapshot = self.reader.snapshot
        result = DemoResult(self.run_id, snapshot, sent, bad_total, timings, log_dir)
        result.report_path = _write_report(settings)
        return result

    def _stream_act(
        self,
        group: ProcessGroup,
        settings: Settings,
        act: int,
        phases: list[Phase],
        valid: list[Message],
        bad: list[Message],
        sent: dict[str, int],
        bad_total: int,
    ) -> None:
        """Run the stream app over one act until its drift is recorded and every event is
        counted or dead-lettered, then stop it (the worker needs the vector store)."""
        group.start("streams", "streams")
        self._phase(f"act {act}: {' → '.join(p.name for p in phases)}")
        _produce(settings, interleave(valid, bad, seed=act))
        assert self.reader is not None
        for language, count in sent.items():
            self.reader.snapshot.languages[language].produced = count
        if act > 1:  # the adapter of the previous act answers while the stream app works
            self._answer(settings, act - 1)

        def done(snap: DemoSnapshot) -> bool:
            drifts = [d for d in snap.drift_events if d["language"] == "fr"]
            counted = all(snap.languages[c].counted >= n for c, n in sent.items())
            return len(drifts) >= act and counted and sum(snap.dead_letters.values()) >= bad_total

        self._wait(group, "streams", done)
        group.stop("streams")

    def _train(self, group: ProcessGroup, act: int) -> None:
        """Run ``compass worker`` until it has handled this act's drift event."""
        p = self.plan
        self._phase(f"act {act}: the worker updates the French adapter")
        group.start(
            "worker", "worker", "--pool", "demo", "--max-events", "1", "--steps", str(p.steps),
            "--budget", str(p.budget), "--eval-texts", str(p.eval_texts),
            "--max-length", str(p.max_length),
        )  # fmt: skip
        self._wait(group, "worker", lambda _: not group.running("worker"))
        group.check("worker")

        def announced(snap: DemoSnapshot) -> bool:
            versions = [v for v in snap.versions if v["language"] == "fr"]
            return len(versions) >= act and len(snap.announcements) >= sum(
                v["status"] in ("active", "retired") for v in versions
            )

        self._wait(group, "relay", announced)

    def _answer(self, settings: Settings, act: int) -> None:
        """The live French adapter answers a prompt, served as production serves it: serve-sync
        (in-process ``peft`` engine, its own consumer group) consumes the run's
        ``adapter-updated`` announcements, verifies and loads each, and routes French to it."""
        assert self.reader is not None
        snap = self.reader.snapshot
        live = [v for v in snap.versions if v["language"] == "fr" and v["status"] == "active"]
        if not live:
            return
        log.info("demo.answering", adapter=live[-1]["adapter_name"])
        from compass.kafka.subscribe import subscribe_adapter_updated
        from compass.serving import ServeSync, build_engine

        if self.engine is None:
            _quiet_transformers()
            engine = build_engine(
                "peft", base_model=settings.base_model_id, data_dir=settings.data_dir
            )
            self.engine = ServeSync(engine, Path(settings.data_dir) / "serving", grace_s=0.0)
            assert settings.broker_bootstrap_servers is not None  # the demo's own broker
            self._subscription = subscribe_adapter_updated(
                settings.broker_bootstrap_servers,
                f"{settings.topic_adapter_updated}-serve-sync",
                topic=settings.topic_adapter_updated,
            )
        name = str(live[-1]["adapter_name"])
        deadline = time.monotonic() + 60.0
        while self.engine.routes().get("fr") != name and time.monotonic() < deadline:
            for received in self._subscription.messages(idle_timeout_s=2.0):
                self.engine.handle(received.event)
        if self.engine.routes().get("fr") != name:
            raise CompassError(f"serve-sync did not switch French to {name} within 60 s")
        prompt = PROMPTS.get(act, PROMPTS[1])
        answer = self.engine.answer("fr", prompt, max_new_tokens=24).strip()
        snap.answers.append((name, prompt, " ".join(answer.split())))
        self.on_update(snap)

    # ------------------------------------------------------------------ plumbing
    def _phase(self, phase: str) -> None:
        snap = self.reader.snapshot if self.reader is not None else DemoSnapshot()
        snap.phase = phase
        snap.elapsed_s = time.monotonic() - self.started
        self.on_update(snap)
        log.info("demo.phase", phase=phase)

    def _poll(self, group: ProcessGroup) -> DemoSnapshot:
        assert self.reader is not None

        def url(name: str) -> str | None:
            return group.children[name].metrics_url if group.running(name) else None

        snap = self.reader.read(url("streams") if "streams" in group.children else None,
                                url("worker") if "worker" in group.children else None)  # fmt: skip
        if "worker" not in group.children or not group.running("worker"):
            snap.worker = None
        snap.processes = {
            name: "running" if group.running(name) else f"exited {child.process.returncode}"
            for name, child in group.children.items()
        }
        snap.elapsed_s = time.monotonic() - self.started
        self.on_update(snap)
        return snap

    def _wait(self, group: ProcessGroup, name: str, done: Callable[[DemoSnapshot], bool]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            snap = self._poll(group)
            if done(snap):
                return
            if name != "worker":
                group.check(name)
                if not group.running(name):
                    raise CompassError(f"the {name} process stopped; see {group.log_dir}")
            time.sleep(0.5)
        raise CompassError(
            f"timed out after {self.timeout_s:.0f}s waiting on the {name} process "
            f"({self.reader.snapshot.phase if self.reader else ''}); see {group.log_dir}"
        )


def _quiet_transformers() -> None:
    """transformers writes progress bars and advice straight to stderr, under the live
    display: keep its messages at error level and without bars (they are in no log file)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _write_report(settings: Settings) -> Path | None:
    """The HTML/PNG report of :mod:`compass.lab.report` (``write_report(settings, out_dir)``),
    written to ``<data_dir>/demo/report/``, when that module is present."""
    try:
        from compass.lab.report import write_report  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        path = write_report(settings, demo_dir(settings) / "report")
    except Exception:  # the report is a bonus: the demo's own summary is already printed
        log.warning("demo.report_failed", exc_info=True)
        return None
    return Path(path) if path is not None else None


def run_demo(
    base: Settings,
    *,
    quick: bool = False,
    reset: bool = False,
    on_update: Callable[[DemoSnapshot], None] = lambda _: None,
    timeout_s: float = 1800,
) -> DemoResult:
    """Run the story once (:data:`QUICK` or :data:`FULL` sizes); see the module docstring."""
    demo = Demo(base, QUICK if quick else FULL, reset=reset, on_update=on_update,
                timeout_s=timeout_s)  # fmt: skip
    return demo.run()
