"""Where the worker finds real usage texts to evaluate on: the vector store's event payloads.

The streams app stores each embedded event with its language, semantic map version, event time
(``occurred_at``, and ``occurred_at_ts`` in integer epoch seconds) and text, so the texts of a
drifted window (and of the window before it) are read back without another store. The lookup
is one filtered query — language, map version and an event-time range on the indexed
``occurred_at_ts`` (:data:`compass.ports.vector_store.INDEXED_FIELDS`) — so it finds every text
of the window however many points the store holds.

Points written before ``occurred_at_ts`` existed are not matched by that query; only when it
finds nothing does the lookup fall back to scanning at most ``max_scan`` of the language's points
(the old behaviour), so an old store still yields some texts.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from compass.ports.vector_store import PayloadFilter, Range, VectorStore
from workers.held_out import UsageText


class VectorStoreUsageTexts:
    def __init__(self, store: VectorStore, max_scan: int = 50_000) -> None:
        self._store = store
        self._max_scan = max_scan

    def texts(
        self,
        language: str,
        since: datetime,
        until: datetime,
        limit: int,
        *,
        semantic_map_version: int | None = None,
    ) -> list[str]:
        """Up to ``limit`` texts of ``language`` with ``since <= occurred_at < until`` (and of
        ``semantic_map_version`` when given), newest first; ties by text, so the choice is
        deterministic."""
        found = self.items(language, since, until, limit, semantic_map_version=semantic_map_version)
        return [item.text for item in found]

    def items(
        self,
        language: str,
        since: datetime,
        until: datetime,
        limit: int,
        *,
        semantic_map_version: int | None = None,
    ) -> list[UsageText]:
        """As :meth:`texts`, with each text's cluster (payload ``cluster``, −1 when absent) and
        event time."""
        where: dict[str, str | int | bool | Range] = {
            "language": language,
            "occurred_at_ts": Range(
                gte=math.floor(since.timestamp()), lte=math.floor(until.timestamp())
            ),
        }
        if semantic_map_version is not None:
            where["semantic_map_version"] = semantic_map_version
        found = self._collect(where, since, until, scan_cap=None)
        if not found:
            legacy: PayloadFilter = {"language": language}
            found = self._collect(legacy, since, until, scan_cap=self._max_scan)
        found.sort(key=lambda item: (item.occurred_at, item.text), reverse=True)
        return found[:limit]

    def _collect(
        self, where: PayloadFilter, since: datetime, until: datetime, scan_cap: int | None
    ) -> list[UsageText]:
        found: list[UsageText] = []
        for scanned, point in enumerate(self._store.scroll(where)):
            if scan_cap is not None and scanned >= scan_cap:
                break
            text = point.payload.get("text")
            occurred = _parse_time(point.payload.get("occurred_at"))
            if text and occurred is not None and since <= occurred < until:
                cluster = point.payload.get("cluster")
                label = int(cluster) if isinstance(cluster, int | float) else -1
                found.append(UsageText(str(text), label, occurred))
        return found


def _parse_time(value: object) -> datetime | None:
    """Payload times are ISO 8601 strings with a zone (or epoch seconds)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
