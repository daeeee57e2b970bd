"""Structured logs: key=value lines on a terminal, JSON lines in production.

``COMPASS_LOG_FORMAT`` picks one.

Logs go to stderr so command output on stdout stays clean for pipes.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import structlog


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _stderr_logger(*_: object) -> structlog.PrintLogger:
    """A logger on the *current* ``sys.stderr`` (looked up when a logger is made, not when
    logging is configured), so a replaced or closed stderr — a test runner capturing output —
    never breaks later log calls."""
    return structlog.PrintLogger(sys.stderr)


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    for noisy in ("kafka", "aiokafka", "urielplus", "faust", "mode", "httpx", "pgserver"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    # pgserver's import asks platformdirs for a runtime dir that containers rarely have
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def configure_file_logging(path: Path, level: str = "INFO") -> None:
    """Send every log record — structlog's and the standard library's (kafka-python, Faust,
    urllib3 …), each at its own level — to ``path`` as JSON/plain lines instead of stderr, for
    commands that own the terminal (the demo's live display)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    numeric = getattr(logging, level.upper(), logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    logging.captureWarnings(True)
    stream = path.open("a", encoding="utf-8")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: structlog.PrintLogger(stream),
        cache_logger_on_first_use=False,
    )
