"""The composition root: every service of the loop, built from :class:`Settings` in one place.

The stream runtime, the adapter worker, the outbox relay, the CLI, the demo, the experiment and
the benchmarks call these functions instead of wiring services by hand. Each ``open_*`` function
builds one real implementation of a port; :func:`bootstrap` builds them all into
:class:`Services`, and a test passes fakes for the parts it replaces (what it passes in, it also
closes). Nothing is built at import time.

Swap points: the embedder (``COMPASS_EMBEDDER_ID``, :func:`compass.embedders.register_embedder`)
— the vector store's dimension comes from it —, the sampler (``COMPASS_SAMPLER``,
:func:`compass.core.samplers.register_sampler`) and the drift detector
(``COMPASS_DRIFT_DETECTOR``, :func:`compass.core.detectors.register_detector`; built per check by
:class:`DriftDetectors`). Modules named in ``COMPASS_PLUGINS`` are imported when the settings are
read, so their registrations exist in every process before any of these is resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from compass.config import Settings
from compass.core.errors import ConfigError
from compass.map_provider import SemanticMapProvider

if TYPE_CHECKING:
    from compass.core.detectors import Correction, DriftDetector
    from compass.core.samplers.base import Sampler
    from compass.embedders.cache import EmbeddingCache
    from compass.kafka.relay import OutboxRelay
    from compass.ports.artifacts import ArtifactStore
    from compass.ports.embedder import Embedder
    from compass.ports.publisher import MessageProducer
    from compass.ports.storage import UnitOfWork
    from compass.ports.vector_store import VectorStore
    from compass.sql.unit_of_work import SqlStore

log = structlog.get_logger(__name__)


# ------------------------------------------------------------------------------ one service each
def open_unit_of_work(settings: Settings, *, pool_size: int = 5, pre_ping: bool = True) -> SqlStore:
    """Units of work on PostgreSQL: ``COMPASS_DATABASE_URL``, else the embedded pgserver
    (started if needed). The schema must be migrated (``compass db upgrade``). ``pre_ping``:
    test each connection at checkout (the stream turns it off and retries instead)."""
    from compass.sql.server import database_url
    from compass.sql.unit_of_work import open_store

    return open_store(database_url(settings), pool_size=pool_size, pre_ping=pre_ping)


def embedding_cache_path(settings: Settings) -> Path:
    """The shared on-disk embedding cache of the CLI, the demo and the experiment."""
    from compass.embedders.factory import default_cache_path

    return default_cache_path(settings.data_dir)


def open_embedder(
    settings: Settings, *, cache: EmbeddingCache | str | Path | None = None
) -> Embedder:
    """The embedder ``COMPASS_EMBEDDER_ID`` names (loaded once per process), behind ``cache``
    when given; :class:`~compass.core.errors.ModelLoadError` for unknown ids."""
    from compass.embedders.factory import load_embedder

    return load_embedder(settings.embedder_id, cache=cache)


def open_vector_store(
    settings: Settings, embedder: Embedder, *, collection: str | None = None
) -> VectorStore:
    """The Qdrant server (``COMPASS_QDRANT_URL``), else Qdrant Edge under the data dir, for
    vectors of ``embedder.dim`` dimensions; ``collection`` defaults to ``qdrant_collection``."""
    from compass.qdrant.store import open_vector_store as open_qdrant

    return open_qdrant(settings, embedder.dim, collection=collection)


def open_existing_vector_store(settings: Settings) -> VectorStore | None:
    """The vector store for maintenance (``compass db purge``) without loading an embedder:
    the Qdrant server's collection, or the Qdrant Edge folder with the dimension it was made
    with; ``None`` when the embedded store was never created."""
    import json

    from compass.qdrant.store import QdrantEdgeStore, QdrantServerStore

    if settings.qdrant_url:
        dim = open_embedder(settings).dim  # creates the collection only if it is missing
        return QdrantServerStore(settings.qdrant_url, settings.qdrant_collection, dim)
    path = settings.embedded_dir / "qdrant" / settings.qdrant_collection
    config = path / "edge_config.json"
    if not config.is_file():
        return None
    dim = int(json.loads(config.read_text())["vectors"][""]["size"])
    return QdrantEdgeStore(path, dim)


def open_publisher(settings: Settings) -> MessageProducer:
    """A Kafka producer on ``COMPASS_BROKER_BOOTSTRAP_SERVERS`` (acks from all replicas)."""
    from compass.kafka.io import KafkaMessageProducer

    if not settings.broker_bootstrap_servers:
        raise ConfigError(
            "publishing needs COMPASS_BROKER_BOOTSTRAP_SERVERS (or `compass infra up`)"
        )
    return KafkaMessageProducer(settings.broker_bootstrap_servers)


def outbox_relay(uow_factory: Callable[[], UnitOfWork], publisher: MessageProducer) -> OutboxRelay:
    """The relay that publishes committed outbox rows through ``publisher``, at least once."""
    from compass.kafka.relay import OutboxRelay

    return OutboxRelay(uow_factory, publisher)


def open_artifact_store(settings: Settings) -> ArtifactStore:
    """Adapter versions under ``COMPASS_ARTIFACTS_DIR``, else ``<data_dir>/adapters``."""
    from compass.lm.artifact_store import LocalArtifactStore

    return LocalArtifactStore(settings.artifacts_dir or Path(settings.data_dir) / "adapters")


def sampler_for(settings: Settings, name: str | None = None, **params: Any) -> Sampler:
    """The sampler ``name`` (default ``COMPASS_SAMPLER``) built with ``params``;
    :class:`~compass.core.errors.DataError` for an unknown name or bad parameters."""
    from compass.core.samplers.base import get_sampler

    return get_sampler(name or settings.sampler, **params)


@dataclass(frozen=True)
class DriftDetectors:
    """Builds the configured drift detector, new and unfitted, for one check of one language.

    ``name`` is a detector registered with :func:`compass.core.detectors.register_detector`;
    the false-alarm rate (per round, across languages), the multiple-testing ``correction`` and
    ``min_events`` (sampled events a window needs) come from the settings. What differs per
    check is given per call: the map's ``n_clusters``, the number of languages tested
    (``n_tests``) and the ``seed`` of the detector's simulations.
    """

    name: str
    false_alarm_rate: float
    correction: Correction
    min_events: int

    def __call__(self, *, n_clusters: int, n_tests: int, seed: int) -> DriftDetector:
        """A new detector; :class:`ConfigError` for an unknown name or parameters it does
        not take (:func:`compass.core.detectors.get_detector`)."""
        from compass.core.detectors import get_detector

        return get_detector(
            self.name,
            n_clusters=n_clusters,
            false_alarm_rate=self.false_alarm_rate,
            n_tests=n_tests,
            correction=self.correction,
            min_events=self.min_events,
            seed=seed,
        )


def drift_detectors(settings: Settings) -> DriftDetectors:
    """The detector factory of ``COMPASS_DRIFT_DETECTOR``, ``COMPASS_DRIFT_FALSE_ALARM_RATE``,
    ``COMPASS_DRIFT_CORRECTION`` and ``COMPASS_DRIFT_MIN_EVENTS``."""
    return DriftDetectors(
        name=settings.drift_detector,
        false_alarm_rate=settings.drift_false_alarm_rate,
        correction=settings.drift_correction,
        min_events=settings.drift_min_events,
    )


# ------------------------------------------------------------------------------ all of them
@dataclass
class Services:
    """What the stream and the worker hold. The publisher is opened on first use (the stream
    only publishes after a drift); :meth:`close` releases what :func:`bootstrap` opened."""

    settings: Settings
    uow_factory: Callable[[], UnitOfWork]
    embedder: Embedder
    vector_store: VectorStore
    artifacts: ArtifactStore
    sampler: Sampler
    maps: SemanticMapProvider
    detectors: DriftDetectors
    publisher_factory: Callable[[], MessageProducer] | None = None
    _publisher: MessageProducer | None = None
    _relay: OutboxRelay | None = None
    _closers: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    @property
    def publisher(self) -> MessageProducer:
        """The event publisher (opened now if it was not); :class:`ConfigError` without one."""
        if self._publisher is None:
            if self.publisher_factory is None:
                raise ConfigError("no event publisher: COMPASS_BROKER_BOOTSTRAP_SERVERS is unset")
            self._publisher = self.publisher_factory()
        return self._publisher

    @property
    def can_publish(self) -> bool:
        return self._publisher is not None or self.publisher_factory is not None

    def relay(self) -> OutboxRelay:
        """The outbox relay on this unit of work and publisher (one per services)."""
        if self._relay is None:
            self._relay = outbox_relay(self.uow_factory, self.publisher)
        return self._relay

    def _close_opened_publisher(self) -> None:
        if self._publisher is not None and self.publisher_factory is not None:
            self._publisher.close()

    def close(self) -> None:
        """Close the publisher, the vector store and the database pool opened here, in that
        order; best effort (what they wrote is already durable). Safe to call twice."""
        closers, self._closers = self._closers, []
        for name, close in closers:
            try:
                close()
            except Exception:
                log.exception("services.close_failed", service=name)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bootstrap(
    settings: Settings,
    *,
    uow_factory: Callable[[], UnitOfWork] | None = None,
    embedder: Embedder | None = None,
    embedding_cache: EmbeddingCache | str | Path | None = None,
    vector_store: VectorStore | None = None,
    publisher: MessageProducer | None = None,
    artifacts: ArtifactStore | None = None,
    sampler: Sampler | None = None,
    detectors: DriftDetectors | None = None,
) -> Services:
    """Every service from ``settings``; each keyword replaces one (a fake in a test).

    The vector store is built for the embedder's dimension. Without a broker setting (and no
    ``publisher``) the services cannot publish (:attr:`Services.can_publish`).
    """
    owned: list[tuple[str, Callable[[], None]]] = []
    try:
        if uow_factory is None:
            store = open_unit_of_work(settings)
            uow_factory = store
            owned.append(("database", store.dispose))
        embedder = embedder or open_embedder(settings, cache=embedding_cache)
        if vector_store is None:
            vector_store = open_vector_store(settings, embedder)
            owned.append(("vector_store", vector_store.close))
        publisher_factory = None
        if publisher is None and settings.broker_bootstrap_servers:
            publisher_factory = _publisher_factory(settings)
        services = Services(
            settings=settings,
            uow_factory=uow_factory,
            embedder=embedder,
            vector_store=vector_store,
            artifacts=artifacts or open_artifact_store(settings),
            sampler=sampler or sampler_for(settings),
            maps=SemanticMapProvider(uow_factory),
            detectors=detectors or drift_detectors(settings),
            publisher_factory=publisher_factory,
            _publisher=publisher,
        )
    except BaseException:
        for _, close in reversed(owned):
            close()
        raise
    services._closers = [("publisher", services._close_opened_publisher), *reversed(owned)]
    return services


def _publisher_factory(settings: Settings) -> Callable[[], MessageProducer]:
    return lambda: open_publisher(settings)


# ------------------------------------------------------------------------------ before a process
def prepare_services(settings: Settings) -> Settings:
    """``settings`` with every service reachable: configured ones as they are, embedded ones
    started (and recorded for other commands), topics created, the database migrated."""
    from compass.infra.stack import with_services
    from compass.sql.migrate import upgrade

    ready = with_services(settings)
    assert ready.database_url is not None
    upgrade(ready.database_url)
    return ready


def ensure_semantic_map(settings: Settings, semantic_map_path: Path | None = None) -> int:
    """Make sure a semantic map is active; return its database version.

    ``semantic_map_path`` (a ``SemanticMap.save`` file) is stored and activated. Without it and
    without an active map, the default pool's map (``compass pool build``) is activated.
    Otherwise: one clear :class:`ConfigError` line instead of a process that cannot assign.
    """
    from compass.core.semantic_map import SemanticMap

    default = settings.data_dir / "pools" / "default" / "semantic_map.npz"
    with open_unit_of_work(settings, pool_size=1) as store, store() as uow:
        record = uow.semantic_maps.active_semantic_map()
        path = semantic_map_path or (default if record is None and default.exists() else None)
        if path is not None:
            record = uow.semantic_maps.save_semantic_map(SemanticMap.load(path), activate=True)
            uow.commit()
            log.info("semantic_map.activated", path=str(path), version=record.version)
    if record is None:
        raise ConfigError(
            "no active semantic map: run `compass pool build` first or pass --semantic-map FILE"
        )
    return record.version
