"""Where the worker finds real usage texts to evaluate on: the vector store's event payloads.

The streams app stores each embedded event with its language, time and text, so the texts of a
drifted window (and of the window before it) can be read back without another store.
"""

from __future__ import annotations

from datetime import UTC, datetime

from compass.ports.vector_store import VectorStore


class VectorStoreUsageTexts:
    def __init__(self, store: VectorStore, max_scan: int = 50_000) -> None:
        self._store = store
        self._max_scan = max_scan

    def texts(self, language: str, since: datetime, until: datetime, limit: int) -> list[str]:
        """Up to ``limit`` texts of ``language`` with ``since <= occurred_at < until``, newest
        first (scans at most ``max_scan`` points of the language)."""
        found: list[tuple[datetime, str]] = []
        for scanned, point in enumerate(self._store.scroll({"language": language})):
            if scanned >= self._max_scan:
                break
            text = point.payload.get("text")
            occurred = _parse_time(point.payload.get("occurred_at"))
            if text and occurred is not None and since <= occurred < until:
                found.append((occurred, str(text)))
        found.sort(reverse=True)
        return [text for _, text in found[:limit]]


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
