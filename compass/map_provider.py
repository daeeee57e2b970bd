"""The active semantic map, read through the unit-of-work port and cached for a while.

The stream assigns every embedded event to the active map's clusters and the worker re-assigns
its pool to it; a map activated later (``compass pool build``) is picked up within
``refresh_s`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from compass.core.errors import ConfigError
from compass.ports.storage import SemanticMapRecord, UnitOfWork

log = structlog.get_logger(__name__)


class SemanticMapProvider:
    """``current()`` → the active :class:`SemanticMapRecord`, re-read every ``refresh_s``
    seconds; :class:`ConfigError` when no map is active."""

    def __init__(self, uow_factory: Callable[[], UnitOfWork], refresh_s: float = 30.0) -> None:
        self._uow_factory = uow_factory
        self._refresh_s = refresh_s
        self._record: SemanticMapRecord | None = None
        self._read_at = 0.0

    def current(self) -> SemanticMapRecord:
        now = time.monotonic()
        if self._record is None or now - self._read_at > self._refresh_s:
            with self._uow_factory() as uow:
                record = uow.semantic_maps.active_semantic_map()
            if record is None:
                raise ConfigError(
                    "no active semantic map in the database: build and activate one first"
                )
            if self._record is None or record.version != self._record.version:
                log.info("semantic_map.active", version=record.version, k=record.semantic_map.k)
            self._record, self._read_at = record, now
        return self._record
