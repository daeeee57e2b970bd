"""The CLI as a user runs it: help, version, infra up/status/down, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _compass(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("COMPASS_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "compass.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_help_lists_commands(tmp_path: Path) -> None:
    result = _compass("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("version", "infra"):
        assert command in result.stdout


def test_version(tmp_path: Path) -> None:
    result = _compass("version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("compass ")


def test_bad_setting_is_one_clear_line(tmp_path: Path) -> None:
    result = _compass("version", cwd=tmp_path, env={"COMPASS_DATABASE_URL": "sqlite:///x.db"})
    assert result.returncode == 2
    assert "COMPASS_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_infra_up_status_down(tmp_path: Path) -> None:
    up = _compass("infra", "up", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert "broker" in up.stdout and "127.0.0.1:" in up.stdout
        status = _compass("infra", "status", cwd=tmp_path)
        assert "running at 127.0.0.1" in status.stdout
        assert "PostgreSQL 16" in status.stdout
        again = _compass("infra", "up", cwd=tmp_path)  # idempotent: reuses the running broker
        assert again.stdout.splitlines()[0] == up.stdout.splitlines()[0]
    finally:
        down = _compass("infra", "down", cwd=tmp_path)
    assert down.returncode == 0 and "broker (pid" in down.stdout
    assert "stopped" in _compass("infra", "status", cwd=tmp_path).stdout


def test_down_stops_the_broker_after_a_child_reused_it(tmp_path: Path) -> None:
    """A child process (the stream app) gets the embedded broker's address as a setting; its
    own ``infra up`` must not make ``infra down`` forget the broker."""
    up = _compass("infra", "up", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.splitlines()[0].split()[-1]
    try:
        child = _compass(
            "infra", "up", cwd=tmp_path, env={"COMPASS_BROKER_BOOTSTRAP_SERVERS": bootstrap}
        )
        assert child.returncode == 0, child.stderr
    finally:
        down = _compass("infra", "down", cwd=tmp_path)
    assert "broker (pid" in down.stdout
