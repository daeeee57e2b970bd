"""Retention everywhere a prompt's text can be (``compass db purge``; docs/privacy.md).

A prompt's text is kept in three places: the vector store's payload (when ``store_text`` is on),
the drift events' sample texts (``drift_events`` rows and their ``outbox`` payloads) and a dead
letter's original bytes. :func:`purge_everywhere` applies one horizon to all of them:

1. vector points whose event time (``occurred_at_ts``) is older than the horizon are found and
   the SHA-256 of their texts collected (of the full text and of the ≤ 500-character sample form
   a drift event quotes);
2. in one transaction: the tables' purge (dedup rows, usage windows, dead letters, published
   outbox rows) and the removal of every drift sample text with one of those digests;
3. only then the points are deleted — so a purge interrupted between 2 and 3 and run again
   still knows which sample texts to scrub.

The DLQ and drift-events *topics* are the broker's: their ``retention.ms`` must not exceed the
horizon (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from compass.core.edge import clean_string
from compass.core.errors import DataError
from compass.core.events import utc_now
from compass.ports.storage import PurgeResult, UnitOfWork
from compass.ports.vector_store import Range, VectorStore

log = structlog.get_logger(__name__)
SAMPLE_TEXT_CHARS = 500
"""Drift events quote at most this many characters of a prompt (streams/drift_check.py)."""
DELETE_CHUNK = 1000


@dataclass(frozen=True)
class RetentionResult:
    """What a purge removed (or, dry, would remove): table rows, vector points, and drift rows
    or outbox payloads that lost a sample text."""

    tables: PurgeResult
    vector_points: int
    sample_texts_scrubbed: int


def text_digests(text: str) -> set[str]:
    """The SHA-256 (hex) of ``text`` and of the sample form a drift event quotes."""
    forms = {text, clean_string(text[:SAMPLE_TEXT_CHARS])}
    return {hashlib.sha256(f.encode("utf-8", "surrogatepass")).hexdigest() for f in forms}


def purge_everywhere(
    uow_factory: Callable[[], UnitOfWork],
    vectors: VectorStore | None,
    older_than: timedelta,
    *,
    dry_run: bool = False,
) -> RetentionResult:
    """Apply the retention horizon ``older_than`` to the tables, the vector store (``None``:
    tables only) and the drift sample texts; raises :class:`DataError` for a horizon ≤ 0."""
    if older_than <= timedelta(0):
        raise DataError(f"retention must be positive, got {older_than}")
    cutoff = utc_now() - older_than
    ids = []
    digests: set[str] = set()
    if vectors is not None:
        where = {"occurred_at_ts": Range(lt=math.floor(cutoff.timestamp()))}
        for point in vectors.scroll(where=where):
            ids.append(point.id)
            text = point.payload.get("text")
            if isinstance(text, str):
                digests |= text_digests(text)
            digest = point.payload.get("text_sha256")
            if isinstance(digest, str):
                digests.add(digest)
    with uow_factory() as uow:
        tables = uow.maintenance.purge(older_than, dry_run=dry_run)
        scrubbed = uow.maintenance.scrub_sample_texts(digests, dry_run=dry_run)
        uow.commit()
    if vectors is not None and not dry_run:
        for start in range(0, len(ids), DELETE_CHUNK):
            vectors.delete(ids[start : start + DELETE_CHUNK])
        vectors.flush()
    log.info(
        "retention.purged",
        dry_run=dry_run,
        cutoff=cutoff.isoformat(),
        vector_points=len(ids),
        sample_texts_scrubbed=scrubbed,
    )
    return RetentionResult(tables, len(ids), scrubbed)
