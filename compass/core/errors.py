"""One root exception for the package, so callers (the CLI above all) can tell a user's mistake
from a bug: every ``CompassError`` becomes one clear line and a non-zero exit."""

from __future__ import annotations


class CompassError(Exception):
    """Root of every error COMPASS raises on purpose."""


class ConfigError(CompassError):
    """A setting is missing or malformed."""


class InfraError(CompassError):
    """An embedded or external service could not be started or reached."""


class InvalidEventError(CompassError):
    """A message could not be decoded into a valid event.

    ``stage`` says which check rejected it (decode, schema, validate) and ``reason`` is a short,
    stable, machine-readable code such as ``empty_text``.
    """

    def __init__(self, reason: str, detail: str, stage: str = "validate") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stage = stage


class UnknownLanguageError(CompassError):
    """A language code that is not a valid or known language."""


class ModelLoadError(CompassError):
    """A model (embedder or causal LM) is missing, corrupt or incompatible."""


class DataError(CompassError):
    """Input data is missing, empty or malformed."""
