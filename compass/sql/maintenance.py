"""Retention in SQL: the tables' purge and the scrubbing of purged texts from drift sample texts
(used by :mod:`compass.retention`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Set
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Connection

from compass.core.errors import DataError
from compass.ports.storage import MaintenanceRepository, PurgeResult

log = structlog.get_logger(__name__)


_PURGES = {
    "processed_events": "processed_at < :cutoff",
    "usage_counts": "window_start < :cutoff",
    "dead_letters": "received_at < :cutoff",
    "outbox": "published_at IS NOT NULL AND published_at < :cutoff",
}


_SAMPLE_TEXT_HOLDERS = (  # (rows holding sample texts, how one is rewritten)
    (
        text("SELECT drift_id, top_cluster_changes FROM drift_events "
             "WHERE jsonb_path_exists(top_cluster_changes, '$[*].sample_texts[*]')"),
        text("UPDATE drift_events SET top_cluster_changes = CAST(:doc AS jsonb) "
             "WHERE drift_id = :k"),
    ),
    (
        text("SELECT id, payload FROM outbox "
             "WHERE jsonb_path_exists(payload, '$.top_cluster_changes[*].sample_texts[*]')"),
        text("UPDATE outbox SET payload = CAST(:doc AS jsonb) WHERE id = :k"),
    ),
)  # fmt: skip


def scrub_texts(document: Any, digests: Set[str]) -> Any | None:
    """``document`` (a drift event's ``top_cluster_changes`` list, or a payload holding one)
    without the sample texts whose SHA-256 is in ``digests``; ``None`` when nothing matched."""
    changes = document.get("top_cluster_changes") if isinstance(document, dict) else document
    if not isinstance(changes, list):
        return None
    hit = False
    for change in changes:
        texts = change.get("sample_texts") if isinstance(change, dict) else None
        if not isinstance(texts, list):
            continue
        kept = [t for t in texts if _sha256_hex(str(t)) not in digests]
        if len(kept) != len(texts):
            change["sample_texts"] = kept
            hit = True
    return document if hit else None


def _sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class SqlMaintenanceRepository(MaintenanceRepository):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def purge(self, older_than: timedelta, *, dry_run: bool = False) -> PurgeResult:
        if older_than <= timedelta(0):
            raise DataError(f"retention must be positive, got {older_than}")
        cutoff = self._conn.execute(
            text("SELECT now() - CAST(:age AS interval)"), {"age": older_than}
        ).scalar_one()
        counts: dict[str, int] = {}
        for table, condition in _PURGES.items():
            verb = "SELECT count(*) FROM" if dry_run else "WITH gone AS (DELETE FROM"
            if dry_run:
                sql = f"{verb} {table} WHERE {condition}"
            else:
                sql = f"{verb} {table} WHERE {condition} RETURNING 1) SELECT count(*) FROM gone"
            counts[table] = int(self._conn.execute(text(sql), {"cutoff": cutoff}).scalar_one())
        log.info("db.purged", dry_run=dry_run, cutoff=str(cutoff), **counts)
        return PurgeResult(**counts)

    def scrub_sample_texts(self, digests: Set[str], *, dry_run: bool = False) -> int:
        """Drift rows and outbox payloads whose ``top_cluster_changes[].sample_texts`` hold a
        text with one of these SHA-256 digests lose that text; returns the rows changed."""
        if not digests:
            return 0
        changed = 0
        for select, update in _SAMPLE_TEXT_HOLDERS:
            for row_key, document in self._conn.execute(select).all():
                scrubbed = scrub_texts(document, digests)
                if scrubbed is None:
                    continue
                changed += 1
                if not dry_run:
                    self._conn.execute(update, {"doc": json.dumps(scrubbed), "k": row_key})
        return changed
