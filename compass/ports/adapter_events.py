"""The lifecycle history of an adapter (issue 11): one record per change, kept in the
``adapter_events`` table and re-exported by :mod:`compass.ports.storage`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

AdapterAction = Literal["promote", "rollback", "pin", "unpin", "retire"]
ADAPTER_ACTIONS: tuple[AdapterAction, ...] = ("promote", "rollback", "pin", "unpin", "retire")


@dataclass(frozen=True)
class AdapterEventRecord:
    """One lifecycle change of an adapter (table ``adapter_events``): ``version`` is the
    version it concerns (``None`` for pin/unpin), ``actor`` who did it (a user or a worker)."""

    event_id: int
    adapter_id: int
    version: int | None
    action: AdapterAction
    reason: str
    actor: str
    created_at: datetime


__all__ = ["ADAPTER_ACTIONS", "AdapterAction", "AdapterEventRecord"]
