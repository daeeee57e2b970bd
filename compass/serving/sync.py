"""Keep one serving engine in step with the live adapters: the heart of ``compass serve-sync``.

For each ``adapter-updated`` message :meth:`ServeSync.handle`:

1. skips it when its adapter already serves the language, or when it is older than what serves
   it (a replay of the topic after a restore);
2. checks it against the engine (:func:`compass.serving.engines.compatibility`: base model,
   revision, rank, target modules, DoRA, ``modules_to_save``);
3. fetches the artifact into the cache and verifies every file against the manifest
   (:func:`compass.serving.fetch.fetch_artifact`);
4. loads it under its ``adapter_name`` and switches the language's route to it;
5. lets requests in flight on the previous adapter finish (up to ``grace_s``; an engine whose
   requests all pass through this process ends the wait as soon as none is in flight), then
   unloads the previous adapter.

A refusal at 2-4 is logged once with its reason (``serve_sync.refused``) and changes nothing:
the previous adapter keeps serving. :meth:`ServeSync.restore` replays the live adapters read from
the database through the same steps, so a restarted engine gets them back.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import structlog

from compass.core.events import AdapterUpdated
from compass.serving.engines import EngineError, ServingEngine, compatibility
from compass.serving.fetch import ArtifactError, fetch_artifact

log = structlog.get_logger(__name__)


class EngineUnavailable(Exception):
    """The engine could not be reached: the message should be tried again, not refused."""


@dataclass(frozen=True)
class SyncOutcome:
    """What one message did: ``applied`` (now serving), ``refused`` (reason says why; the
    previous adapter still serves) or ``skipped`` (already serving, or stale). ``seconds``: fetch,
    verify and load time; ``previous``: the adapter the route pointed at before."""

    status: Literal["applied", "refused", "skipped"]
    language: str
    adapter_name: str
    reason: str = ""
    previous: str | None = None
    seconds: float = 0.0


@dataclass
class SyncStats:
    """Counts since start: applied, refused by reason code, skipped, restored."""

    applied: int = 0
    skipped: int = 0
    restored: int = 0
    refused: Counter[str] = field(default_factory=Counter)


class ServeSync:
    """Routes ``{language: adapter_name}`` over ``engine``, with artifacts cached under
    ``cache_dir`` and a grace period of ``grace_s`` seconds before a replaced adapter is
    unloaded. Thread-safe: :meth:`answer` and :meth:`routes` may be called from request threads
    while :meth:`handle` runs."""

    def __init__(self, engine: ServingEngine, cache_dir: Path, *, grace_s: float = 10.0) -> None:
        self.engine = engine
        self.cache_dir = Path(cache_dir)
        self.grace_s = grace_s
        self.stats = SyncStats()
        self.outcomes: deque[SyncOutcome] = deque(maxlen=200)
        self._routes: dict[str, str] = {}
        self._since: dict[str, datetime] = {}
        self._in_flight: Counter[str] = Counter()
        self._state = threading.Condition()
        self._apply = threading.Lock()

    # ------------------------------------------------------------------ reading
    def routes(self) -> dict[str, str]:
        """The adapter serving each language now: ``{language: adapter_name}``."""
        with self._state:
            return dict(self._routes)

    def answer(self, language: str, prompt: str, max_new_tokens: int = 24) -> str:
        """``prompt`` answered by the language's adapter (the base model when none serves it);
        the request counts as in flight for the grace period."""
        with self._state:
            name = self._routes.get(language)
            self._in_flight[name or ""] += 1
        try:
            return self.engine.generate(prompt, name, max_new_tokens)
        finally:
            with self._state:
                self._in_flight[name or ""] -= 1
                self._state.notify_all()

    # ------------------------------------------------------------------ writing
    def restore(self, messages: Iterable[AdapterUpdated]) -> int:
        """Apply the live adapters (from :func:`compass.serving.live.read_live_adapters`) on
        start; returns how many now serve. A refused one is logged and left out."""
        restored = 0
        for message in messages:
            outcome = self.handle(message)
            if outcome.status == "applied":
                restored += 1
        self.stats.restored += restored
        log.info("serve_sync.restored", adapters=restored, routes=self.routes())
        return restored

    def handle(self, message: AdapterUpdated) -> SyncOutcome:
        """Apply one announcement (the steps in the module docstring). Raises
        :class:`EngineUnavailable` when the engine cannot be reached (try again later);
        every other failure is a refusal."""
        with self._apply:
            outcome = self._handle(message)
        self.outcomes.append(outcome)
        return outcome

    def _handle(self, message: AdapterUpdated) -> SyncOutcome:
        language, name = message.language, message.adapter_name
        with self._state:
            current = self._routes.get(language)
            since = self._since.get(language)
        if current == name and name in self.engine.loaded():
            return self._skip(language, name, "already_live")
        if since is not None and message.created_at < since:
            return self._skip(language, name, f"stale: announced before {current} went live")
        reason = compatibility(self.engine, message)
        if reason is not None:
            return self._refuse(message, reason, current)
        started = time.perf_counter()
        try:
            folder = fetch_artifact(message.artifact_uri, message.manifest, self.cache_dir, name)
        except ArtifactError as exc:
            return self._refuse(message, str(exc), current)
        try:
            self.engine.load(name, folder)
        except EngineError as exc:
            if "unreachable" in str(exc):
                raise EngineUnavailable(str(exc)) from exc
            return self._refuse(message, f"load_failed: {exc}", current)
        seconds = time.perf_counter() - started
        with self._state:
            self._routes[language] = name
            self._since[language] = message.created_at
            still_routed = set(self._routes.values())
        self.stats.applied += 1
        log.info(
            "serve_sync.applied",
            language=language,
            adapter=name,
            version=message.version,
            previous=current,
            load_seconds=round(seconds, 3),
        )
        if current is not None and current != name and current not in still_routed:
            self._retire(current)
        return SyncOutcome("applied", language, name, previous=current, seconds=seconds)

    def _retire(self, name: str) -> None:
        """Wait for the grace period (or, for an engine that sees every request, until none is
        in flight on ``name``), then unload ``name``."""
        deadline = time.monotonic() + self.grace_s
        with self._state:
            while True:
                remaining = deadline - time.monotonic()
                idle = self._in_flight[name] <= 0
                if remaining <= 0 or (idle and self.engine.tracks_requests):
                    break
                self._state.wait(timeout=remaining)
            if name in self._routes.values():
                return  # routed again meanwhile (a rollback): keep it
        try:
            self.engine.unload(name)
            log.info("serve_sync.unloaded", adapter=name)
        except EngineError as exc:
            log.warning("serve_sync.unload_failed", adapter=name, reason=str(exc)[:300])

    def _skip(self, language: str, name: str, reason: str) -> SyncOutcome:
        self.stats.skipped += 1
        log.info("serve_sync.skipped", language=language, adapter=name, reason=reason)
        return SyncOutcome("skipped", language, name, reason=reason)

    def _refuse(self, message: AdapterUpdated, reason: str, current: str | None) -> SyncOutcome:
        code = reason.split(":", 1)[0]
        self.stats.refused[code] += 1
        log.warning(
            "serve_sync.refused",
            language=message.language,
            adapter=message.adapter_name,
            version=message.version,
            reason=reason,
            still_serving=current,
        )
        return SyncOutcome(
            "refused", message.language, message.adapter_name, reason=reason, previous=current
        )

    def close(self) -> None:
        self.engine.close()
