"""The usage counts: the streaming hot path (``record_usage``) and the reads of the drift check.

``record_usage`` is one statement per batch whatever its size (after a ``SET LOCAL jit = off``,
see :data:`_NO_JIT`): the batch's event ids go to
``processed_events`` as one array (``ON CONFLICT DO NOTHING RETURNING`` tells which are new), and
the counts of the new events, aggregated per (language, window, map, cluster) in PostgreSQL, are
added to ``usage_counts`` by the same statement — in the caller's transaction, so a redelivered
event is never counted twice. No row comes back to Python but the number counted. Each dedup row
keeps the event's content digest: an id seen before with *another* digest is a re-used
``event_id`` (``record_usage_checked`` names them, with one more statement only in batches that
hold ids already seen), which the stream dead-letters (``duplicate_event_id``) instead of
dropping it as a redelivery.
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


_ADD_FRESH_COUNTS = """
     GROUP BY 1, 2, 3, 4, 5
     ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (language, window_start, window_seconds, semantic_map_version, cluster)
    DO UPDATE SET total_count = u.total_count + EXCLUDED.total_count,
                  sampled_count = u.sampled_count + EXCLUDED.sampled_count
    RETURNING 1
)
SELECT count(*) FROM fresh
"""
"""The end of both batch statements: the new events' counts grouped per key, upserted in one
key order for every writer (no deadlock between concurrent batches); the number counted."""

_COUNT_BATCH = text(
    """
    WITH b AS (
        SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:digests AS text[]),
                             CAST(:slots AS integer[]), CAST(:weights AS numeric[]),
                             CAST(:sampled AS boolean[]))
               AS b(event_id, digest, slot, weight, sampled)
    ), fresh AS (
        INSERT INTO processed_events (event_id, content_digest)
        SELECT event_id, decode(NULLIF(digest, ''), 'hex') FROM b
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
    ), k AS (
        SELECT * FROM unnest(CAST(:languages AS text[]), CAST(:windows AS timestamptz[]),
                             CAST(:seconds AS integer[]), CAST(:versions AS integer[]),
                             CAST(:clusters AS integer[])) WITH ORDINALITY
               AS k(language, window_start, window_seconds, semantic_map_version, cluster, slot)
    ), counted AS (
        INSERT INTO usage_counts AS u
               (language, window_start, window_seconds, semantic_map_version, cluster,
                total_count, sampled_count)
        SELECT k.language, k.window_start, k.window_seconds, k.semantic_map_version, k.cluster,
               sum(b.weight), count(*) FILTER (WHERE b.sampled)
          FROM fresh JOIN b USING (event_id) JOIN k USING (slot)
    """
    + _ADD_FRESH_COUNTS
)
"""One batch: ``b`` the events (unique ids, their digests as hex, the slot of their count key,
weight, sampled), ``k`` the batch's distinct count keys (slot = position, from 1); the new ids go
to ``processed_events`` and only theirs are counted, aggregated per key and upserted in one key
order for every writer (no deadlock between concurrent batches). A data-modifying ``WITH`` runs
once and to completion whether or not the outer query reads it (PostgreSQL manual, 7.8.4)."""

_CONFLICTS = text(
    """
    SELECT p.event_id
      FROM processed_events p
      JOIN unnest(CAST(:ids AS text[]), CAST(:digests AS text[])) AS b(i, d) ON p.event_id = b.i
     WHERE p.content_digest <> decode(b.d, 'hex')
    """
)
"""Of the ids already seen (only those, with a digest), those stored with another digest."""

_NO_JIT = text("SET LOCAL jit = off")
"""For the rest of the caller's transaction (PostgreSQL: ``jit`` is a user-settable GUC)."""

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
    """
    + _ADD_FRESH_COUNTS
)
_COPY_STAGE = (
    "COPY usage_stage (event_id, language, window_start, window_seconds, semantic_map_version,"
    " cluster, weight, sampled, content_digest) FROM STDIN"
)


class SqlUsageRepository(UsageRepository):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def record_usage_checked(self, events: Sequence[UsageObservation]) -> RecordedUsage:
        """One statement per batch (:data:`_COUNT_BATCH`): the new event ids with their content
        digests (``ON CONFLICT DO NOTHING``) and the counts of the new events only, aggregated
        in PostgreSQL, in the caller's transaction. Only when some ids were already seen, a
        second reads which of them were stored with another digest (a re-used ``event_id``);
        an id repeated inside ``events`` with another digest than its first occurrence is one
        too. Raises :class:`DataError` for a weight that is not positive and finite."""
        if not events:
            return RecordedUsage(0)
        first: dict[str, UsageObservation] = {}
        conflicts: list[str] = []
        slots: dict[_CountKey, int] = {}
        slot_of: list[int] = []
        for event in events:
            seen = first.get(event.event_id)
            if seen is not None:  # again in this batch (the same object, a copy, or a re-use)
                if _differs(seen.content_digest, event.content_digest):
                    conflicts.append(event.event_id)
                continue
            first[event.event_id] = event
            if not 0.0 < event.weight < math.inf:
                raise DataError(
                    f"event {event.event_id}: weight must be positive, got {event.weight}"
                )
            key = (
                event.language,
                event.window_start,
                event.window_seconds,
                event.semantic_map_version,
                event.cluster,
            )
            slot = slots.get(key)
            if slot is None:
                slot = slots[key] = len(slots) + 1  # WITH ORDINALITY counts from 1
            slot_of.append(slot)
        keys = list(slots)
        # the planner cannot estimate joins of the statement's CTEs (1/200 selectivity: a
        # 20,000-event batch looks like 10^8 rows) and JIT-compiled it: 0.36 s of a 0.73 s
        # statement (EXPLAIN ANALYZE); a batch statement gains nothing from JIT
        self._conn.execute(_NO_JIT)
        n_new = int(
            self._conn.execute(
                _COUNT_BATCH,
                {
                    "ids": text_array_literal(first),
                    "digests": _digests(first.values()),
                    "slots": "{" + ",".join(map(str, slot_of)) + "}",
                    "weights": "{" + ",".join(repr(float(e.weight)) for e in first.values()) + "}",
                    "sampled": "{"
                    + ",".join("t" if e.sampled else "f" for e in first.values())
                    + "}",
                    "languages": text_array_literal(k[0] for k in keys),
                    "windows": text_array_literal(
                        require_aware(k[1], "window_start").isoformat() for k in keys
                    ),
                    "seconds": _int_array_literal(k[2] for k in keys),
                    "versions": _int_array_literal(k[3] for k in keys),
                    "clusters": _int_array_literal(k[4] for k in keys),
                },
            ).scalar_one()
        )
        if n_new < len(first):  # some seen before: a redelivery, or a re-used id
            conflicts[:0] = self._conflicts(first)
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

    def _conflicts(self, first: dict[str, UsageObservation]) -> list[str]:
        """The ids of ``first`` stored with another digest than theirs: ids seen before this
        batch (those it just inserted carry their own digest, so they are never one)."""
        seen = [e for e in first.values() if e.content_digest is not None]
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
