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


class TransientError(CompassError):
    """A dependency is unavailable for now: retry the work later, never dead-letter it."""


# Driver exceptions that mean "the service is unavailable", by defining module and class name, so
# the pure core can classify them without importing the drivers.
_TRANSIENT_CLASSES: dict[str, frozenset[str]] = {
    "sqlalchemy.exc": frozenset({"OperationalError", "InterfaceError", "DisconnectionError",
                                 "TimeoutError"}),
    "psycopg": frozenset({"OperationalError", "InterfaceError"}),
    "psycopg_pool": frozenset({"PoolTimeout", "PoolClosed"}),
    "httpx": frozenset({"TransportError"}),
    "httpcore": frozenset({"ConnectError", "ReadTimeout", "WriteTimeout", "PoolTimeout"}),
    "qdrant_client": frozenset({"ResponseHandlingException"}),
}  # fmt: skip
# SQLSTATE classes that say the server cannot do it *now*: connection (08), resources (53),
# operator intervention (57), system (58), transaction rollback (40: deadlock, serialization);
# 55P03 = lock not available. Everything else (54 program limit exceeded …) is deterministic.
_TRANSIENT_SQLSTATES = ("08", "53", "57", "58", "40", "55P03")


def is_transient(exc: BaseException) -> bool:
    """Is ``exc`` a dependency being unavailable (database or broker down, a timeout) rather
    than something about the input? The one classification the stream's retry-or-isolate
    decision uses: transient failures are retried with back-off, never dead-lettered.

    True for :class:`TransientError`, :class:`ConnectionError`, :class:`TimeoutError`, Kafka
    errors marked ``retriable``, and database/HTTP driver errors of the connection kind (a
    database error whose SQLSTATE is not of a transient class is deterministic); also when
    such an error is the cause of ``exc``."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if _transient_itself(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | ConnectionError | TimeoutError):
        return True
    if getattr(type(exc), "retriable", False) is True:  # kafka-python's KafkaError
        return True
    for cls in type(exc).__mro__:
        module = cls.__module__ or ""
        names = next(
            (v for k, v in _TRANSIENT_CLASSES.items() if module == k or module.startswith(k + ".")),
            None,
        )
        if names is not None and cls.__name__ in names:
            state = _sqlstate(exc)
            return state is None or state.startswith(_TRANSIENT_SQLSTATES)
    return False


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error, or of the one a SQLAlchemy error wraps (``orig``)."""
    for candidate in (exc, getattr(exc, "orig", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
    return None
