"""Structured logs: key=value lines on a terminal, JSON lines in production.

``COMPASS_LOG_FORMAT`` picks one.

Logs go to stderr so command output on stdout stays clean for pipes.
"""

from __future__ import annotations

import logging
import sys
import warnings

import structlog


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s", force=True)
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
