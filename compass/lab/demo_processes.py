"""The demo's child processes: ``compass streams``, ``compass worker`` and ``compass relay``,
each its own OS process as in production, each with its own log file and metrics port.

:class:`ProcessGroup` starts them (new process group, output to ``<log_dir>/<name>.log``) and
stops every one it started — on a normal end, on an error and on Ctrl-C/SIGTERM (the caller
uses it as a context manager) — with SIGTERM, then SIGKILL of the process group after a grace
period (a Faust worker can hang on shutdown; see INFRA.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from compass.config import Settings
from compass.core.errors import CompassError


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child: this one without ``COMPASS_*``, then ``settings`` as
    ``COMPASS_*`` variables, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPASS_")}
    env.update(settings.as_environment())
    env.update(extra)
    return env


def _die_with_parent() -> None:
    """In the child before exec: on Linux, ask for SIGTERM when the demo process dies, so a
    demo killed with SIGKILL (no ``finally``) leaves no orphan behind (``prctl``
    ``PR_SET_PDEATHSIG``); elsewhere nothing."""
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str


class ProcessGroup:
    """Children started by name; :meth:`stop_all` (and leaving the ``with`` block) stops them."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}

    def start(self, name: str, *args: str) -> Child:
        """Run ``compass <args>`` as child ``name`` with its own metrics port."""
        if name in self.children and self.children[name].process.poll() is None:
            raise CompassError(f"the demo's {name} process is already running")
        port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "compass.cli", *args],
                env=child_environment(self.settings, COMPASS_METRICS_PORT=str(port)),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log_path, f"http://127.0.0.1:{port}/metrics")
        self.children[name] = child
        return child

    def running(self, name: str) -> bool:
        child = self.children.get(name)
        return child is not None and child.process.poll() is None

    def check(self, name: str) -> None:
        """Raise :class:`CompassError` (naming the log file) if ``name`` exited with an error."""
        child = self.children[name]
        code = child.process.poll()
        if code not in (None, 0):
            raise CompassError(f"the {name} process exited with code {code}; see {child.log_path}")

    def wait(self, name: str, timeout_s: float) -> int:
        """Wait for ``name`` to exit; its exit code (the process is killed after ``timeout_s``)."""
        child = self.children[name]
        try:
            return child.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(name)
            raise CompassError(
                f"the {name} process did not finish within {timeout_s:.0f}s; see {child.log_path}"
            ) from None

    def stop(self, name: str, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of its process group after ``grace_s`` seconds."""
        child = self.children.get(name)
        if child is None or child.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)  # helpers it left behind

    def stop_all(self) -> None:
        for name in list(self.children):
            self.stop(name)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop_all()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`KeyboardInterrupt` (as Ctrl-C does), so the
    ``finally`` clauses that stop the children run either way."""

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
