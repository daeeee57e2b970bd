"""Small conversions shared by the SQL repositories (rows to records, JSON for jsonb)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic_core import to_jsonable_python

from compass.core.errors import DataError


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def float_or_none(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def json_safe(value: Any) -> Any:
    """Plain JSON types for a jsonb column (datetimes, UUIDs, pydantic models included)."""
    return to_jsonable_python(value)


def require_aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise DataError(f"{what} must carry a time zone, got {value.isoformat()}")
    return value
