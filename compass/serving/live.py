"""The live adapters as SQL users see them (the ``live_adapters`` view), as announcements.

A restarted ``serve-sync`` reads them to load every live adapter again without waiting for the
next drift, and ``compass routes`` prints their names. Each row becomes the
:class:`~compass.core.events.AdapterUpdated` the worker announced for that version (same
``message_id``), so a restored adapter goes through exactly the checks of a new one.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import structlog

from compass.core.events import AdapterUpdated, PeftInfo
from compass.core.naming import announcement_id

log = structlog.get_logger(__name__)

_QUERY = """
SELECT l.language, l.base_model, l.version, l.adapter_name, l.artifact_uri,
       l.base_model_revision, l.activated_at, l.drift_id, l.metrics,
       v.id AS version_id, v.artifact_sha256, v.manifest, v.peft_config, v.parent_version
  FROM live_adapters l
  JOIN adapter_versions v ON v.adapter_id = l.adapter_id AND v.number = l.version
 ORDER BY l.language, l.base_model
"""


def read_live_adapters(database_url: str, base_model: str | None = None) -> list[AdapterUpdated]:
    """The live version of every (language, base model) as an announcement, ordered by
    language; only ``base_model``'s when given. Rows that cannot form an announcement (no PEFT
    block recorded) are logged and left out."""
    from sqlalchemy import text

    from compass.sql.server import make_db_engine

    engine = make_db_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(text(_QUERY))]
    finally:
        engine.dispose()
    out: list[AdapterUpdated] = []
    for row in rows:
        if base_model is not None and row["base_model"] != base_model:
            continue
        try:
            out.append(_announcement(row))
        except Exception as exc:  # an old row without a PEFT block: say so, keep the rest
            log.warning(
                "serving.live_row_skipped",
                language=row["language"],
                version=row["version"],
                reason=f"{type(exc).__name__}: {str(exc)[:200]}",
            )
    return out


def _announcement(row: dict[str, Any]) -> AdapterUpdated:
    peft_fields = set(PeftInfo.model_fields)
    peft = {k: v for k, v in dict(row["peft_config"] or {}).items() if k in peft_fields}
    metrics = {
        str(k): float(v)
        for k, v in dict(row["metrics"] or {}).items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    }
    activated: datetime | None = row["activated_at"]
    return AdapterUpdated(
        message_id=announcement_id(row["version_id"], row["artifact_sha256"]),
        language=row["language"],
        base_model=row["base_model"],
        base_model_revision=row["base_model_revision"] or "",
        adapter_id=f"{row['language']}:{row['base_model']}",
        version=int(row["version"]),
        adapter_name=row["adapter_name"],
        artifact_uri=row["artifact_uri"],
        manifest={str(k): str(v) for k, v in dict(row["manifest"] or {}).items()},
        peft=PeftInfo.model_validate(peft),
        metrics=metrics,
        drift_id=row["drift_id"],
        created_at=activated or datetime.now(UTC),
    )
