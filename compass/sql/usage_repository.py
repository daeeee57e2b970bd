"""The usage counts: the streaming hot path (``record_usage``) and the reads of the drift check.

``record_usage`` is two statements per batch whatever its size: the batch's event ids go to
``processed_events`` as one array (``ON CONFLICT DO NOTHING RETURNING`` tells which are new),
then one upsert adds the counts of the new events, aggregated per (language, window, map,
cluster), to ``usage_counts`` — in the caller's transaction, so a redelivered event is never
counted twice and a crash between the two statements counts nothing. Each dedup row keeps the
event's content digest: an id seen before with *another* digest is a re-used ``event_id``
(``record_usage_checked`` names them, with one more statement only in batches that hold ids
already seen), which the stream dead-letters (``duplicate_event_id``) instead of dropping it as
a redelivery.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Result

from compass.core.errors import DataError
from compass.ports.storage import (
    ClusterCount,
    RecordedUsage,
    UsageObservation,
    UsageRepository,
)
from compass.sql.common import require_aware, utc


def text_array_literal(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of strings (``{"a","b\\"c"}``).

    The hot path sends one array per batch as a single text parameter: building it with two
    ``str.replace`` calls per element is several times faster than adapting a Python list
    element by element, and quoting every element makes any content safe (commas, braces,
    spaces, the word NULL); only backslash and double quote need escaping inside quotes.
    """
    quoted = [v.replace("\\", "\\\\").replace('"', '\\"') for v in values]
    return '{"' + '","'.join(quoted) + '"}' if quoted else "{}"


def _differs(a: bytes | None, b: bytes | None) -> bool:
    return a is not None and b is not None and a != b


def _digests(events: Iterable[UsageObservation]) -> str:
    """The events' content digests as one text array of hex (``""``: none, stored NULL)."""
    return text_array_literal(
        "" if e.content_digest is None else e.content_digest.hex() for e in events
    )


def _int_array_literal(values: Iterable[int]) -> str:
    return "{" + ",".join(str(int(v)) for v in values) + "}"


_INSERT_PROCESSED = text(
    """
    INSERT INTO processed_events (event_id, content_digest)
    SELECT i, decode(NULLIF(d, ''), 'hex')
      FROM unnest(CAST(:ids AS text[]), CAST(:digests AS text[])) AS b(i, d)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)

_CONFLICTS = text(
    """
    SELECT p.event_id
      FROM processed_events p
      JOIN unnest(CAST(:ids AS text[]), CAST(:digests AS text[])) AS b(i, d) ON p.event_id = b.i
     WHERE p.content_digest <> decode(b.d, 'hex')
    """
)
"""Of the ids already seen (only those, with a digest), those stored with another digest."""

_UPSERT_COUNTS = text(
    """
    INSERT INTO usage_counts AS u
           (language, window_start, window_seconds, semantic_map_version, cluster,
            total_count, sampled_count)
    SELECT * FROM unnest(CAST(:languages AS text[]), CAST(:windows AS timestamptz[]),
                         CAST(:seconds AS integer[]), CAST(:versions AS integer[]),
                         CAST(:clusters AS integer[]), CAST(:totals AS numeric[]),
                         CAST(:sampled AS bigint[]))
    ON CONFLICT (language, window_start, window_seconds, semantic_map_version, cluster)
    DO UPDATE SET total_count = u.total_count + EXCLUDED.total_count,
                  sampled_count = u.sampled_count + EXCLUDED.sampled_count
    """
)

_CountKey = tuple[str, datetime, int, int, int]

_STAGE_TABLE = text(
    """
    CREATE TEMP TABLE IF NOT EXISTS usage_stage (
        event_id text, language text, window_start timestamptz, window_seconds integer,
        semantic_map_version integer, cluster integer, weight double precision, sampled boolean,
        content_digest bytea
    ) ON COMMIT DELETE ROWS
    """
)

_COUNT_STAGED = text(
    """
    WITH fresh AS (
        INSERT INTO processed_events (event_id, content_digest)
        SELECT event_id, content_digest FROM usage_stage
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
    ), counted AS (
        INSERT INTO usage_counts AS u
               (language, window_start, window_seconds, semantic_map_version, cluster,
                total_count, sampled_count)
        SELECT s.language, s.window_start, s.window_seconds, s.semantic_map_version, s.cluster,
               sum(s.weight)::numeric, count(*) FILTER (WHERE s.sampled)
        FROM usage_stage s JOIN fresh USING (event_id)
        GROUP BY 1, 2, 3, 4, 5
        ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (language, window_start, window_seconds, semantic_map_version, cluster)
        DO UPDATE SET total_count = u.total_count + EXCLUDED.total_count,
                      sampled_count = u.sampled_count + EXCLUDED.sampled_count
        RETURNING 1
    )
    SELECT count(*) FROM fresh
    """
)
_COPY_STAGE = (
    "COPY usage_stage (event_id, language, window_start, window_seconds, semantic_map_version,"
    " cluster, weight, sampled, content_digest) FROM STDIN"
)


class SqlUsageRepository(UsageRepository):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def record_usage_checked(self, events: Sequence[UsageObservation]) -> RecordedUsage:
        """Two statements per batch: the new event ids with their content digests (``ON
        CONFLICT DO NOTHING RETURNING``), then one upsert of the counts aggregated over the new
        events only. Only when some ids were already seen *and* carry a digest, a third reads
        which of those were stored with another digest (a re-used ``event_id``); an id repeated
        inside ``events`` with another digest than its first occurrence is one too."""
        if not events:
            return RecordedUsage(0)
        first: dict[str, UsageObservation] = {}
        conflicts: list[str] = []
        for event in events:
            seen = first.setdefault(event.event_id, event)
            if seen is not event and _differs(seen.content_digest, event.content_digest):
                conflicts.append(event.event_id)
        new_ids = self._conn.execute(
            _INSERT_PROCESSED,
            {"ids": text_array_literal(first), "digests": _digests(first.values())},
        ).scalars()
        totals: dict[_CountKey, list[float]] = {}
        n_new = 0
        new_ids_seen: set[str] = set()
        for event_id in new_ids:
            n_new += 1
            new_ids_seen.add(event_id)
            event = first[event_id]
            key = (
                event.language,
                event.window_start,
                event.window_seconds,
                event.semantic_map_version,
                event.cluster,
            )
            slot = totals.get(key)
            if slot is None:
                slot = totals[key] = [0.0, 0]
            if not 0.0 < event.weight < math.inf:
                raise DataError(f"event {event_id}: weight must be positive, got {event.weight}")
            slot[0] += event.weight
            if event.sampled:
                slot[1] += 1
        if n_new < len(first):
            conflicts[:0] = self._conflicts(first, new_ids_seen)
        if not totals:
            return RecordedUsage(0, conflicts)
        keys = sorted(totals)  # one lock order for every writer: no deadlocks between batches
        self._conn.execute(
            _UPSERT_COUNTS,
            {
                "languages": text_array_literal(k[0] for k in keys),
                "windows": text_array_literal(
                    require_aware(k[1], "window_start").isoformat() for k in keys
                ),
                "seconds": _int_array_literal(k[2] for k in keys),
                "versions": _int_array_literal(k[3] for k in keys),
                "clusters": _int_array_literal(k[4] for k in keys),
                "totals": "{" + ",".join(repr(float(totals[k][0])) for k in keys) + "}",
                "sampled": _int_array_literal(int(totals[k][1]) for k in keys),
            },
        )
        return RecordedUsage(n_new, conflicts)

    def reused_ids(self, events: Sequence[tuple[str, bytes]]) -> set[str]:
        if not events:
            return set()
        rows = self._conn.execute(
            _CONFLICTS,
            {
                "ids": text_array_literal(i for i, _ in events),
                "digests": text_array_literal(d.hex() for _, d in events),
            },
        ).scalars()
        return set(rows)

    def _conflicts(self, first: dict[str, UsageObservation], new: set[str]) -> list[str]:
        """The ids of ``first`` seen before this batch whose stored digest is another one."""
        seen = [e for i, e in first.items() if i not in new and e.content_digest is not None]
        if not seen:
            return []
        rows = self._conn.execute(
            _CONFLICTS,
            {"ids": text_array_literal(e.event_id for e in seen), "digests": _digests(seen)},
        ).scalars()
        found = set(rows)
        return [e.event_id for e in seen if e.event_id in found]

    def record_usage_staged(self, events: Sequence[UsageObservation]) -> int:
        """``record_usage`` through ``COPY`` into a session-local staging table and one
        statement that inserts the new ids (with their digests) and adds their counts (the same
        guarantee: a redelivered id is counted never again; same transaction; no conflict check,
        see :meth:`record_usage_checked`). Measured against
        :meth:`record_usage` in ``benchmarks/bench_usage_ingest.py``."""
        if not events:
            return 0
        first: dict[str, UsageObservation] = {}
        for event in events:
            if not 0.0 < event.weight < math.inf:
                raise DataError(
                    f"event {event.event_id}: weight must be positive, got {event.weight}"
                )
            first.setdefault(event.event_id, event)
        self._conn.execute(_STAGE_TABLE)
        driver = self._conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor, cursor.copy(_COPY_STAGE) as copy:
            for e in first.values():
                copy.write_row(
                    (
                        e.event_id,
                        e.language,
                        require_aware(e.window_start, "window_start"),
                        e.window_seconds,
                        e.semantic_map_version,
                        e.cluster,
                        e.weight,
                        e.sampled,
                        e.content_digest,
                    )
                )
        return int(self._conn.execute(_COUNT_STAGED).scalar_one())

    def usage_distribution(
        self,
        language: str,
        since: datetime,
        until: datetime,
        semantic_map_version: int,
    ) -> dict[int, ClusterCount]:
        rows = self._span_counts("", language, since, until, semantic_map_version)
        return {int(r.cluster): ClusterCount(float(r.total), int(r.sampled)) for r in rows}

    def usage_by_window(
        self,
        language: str,
        since: datetime,
        until: datetime,
        semantic_map_version: int,
    ) -> dict[datetime, dict[int, ClusterCount]]:
        rows = self._span_counts("window_start, ", language, since, until, semantic_map_version)
        out: dict[datetime, dict[int, ClusterCount]] = {}
        for r in rows:
            out.setdefault(utc(r.window_start), {})[int(r.cluster)] = ClusterCount(
                float(r.total), int(r.sampled)
            )
        return out

    def _span_counts(
        self, per: str, language: str, since: datetime, until: datetime, version: int
    ) -> Result[Any]:
        """Summed counts per ``{per}cluster`` over windows starting in ``[since, until)``;
        ``per`` is ``""`` or ``"window_start, "`` (a constant, never user input)."""
        return self._conn.execute(
            text(
                f"""
                SELECT {per}cluster, sum(total_count) AS total, sum(sampled_count) AS sampled
                  FROM usage_counts
                 WHERE language = :language AND semantic_map_version = :version
                   AND window_start >= :since AND window_start < :until
                 GROUP BY {per}cluster ORDER BY {per}cluster
                """
            ),
            {
                "language": language,
                "version": version,
                "since": require_aware(since, "since"),
                "until": require_aware(until, "until"),
            },
        )

    def languages_with_usage(self, since: datetime) -> list[str]:
        rows = self._conn.execute(
            text(
                "SELECT DISTINCT language FROM usage_counts WHERE window_start >= :since "
                "ORDER BY language"
            ),
            {"since": require_aware(since, "since")},
        )
        return [str(r) for r in rows.scalars()]
