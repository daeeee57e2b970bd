"""The live adapters (what the ``live_adapters`` view shows SQL users), as announcements.

A restarted ``serve-sync`` reads them to load every live adapter again without waiting for the
next drift, and ``compass routes`` prints their names. Each live version becomes the
:class:`~compass.core.events.AdapterUpdated` the worker announced for it — built by the one
builder, :func:`compass.lifecycle.announcement`, with the same ``message_id``
(:func:`~compass.core.naming.announcement_id`) and ``created_at`` its activation time — so a
restored adapter goes through exactly the checks of a new one, and an older announcement still
on the topic is skipped as stale.
"""

from __future__ import annotations

import structlog

from compass.core.errors import DataError
from compass.core.events import AdapterUpdated
from compass.core.naming import announcement_id
from compass.lifecycle import announcement

log = structlog.get_logger(__name__)


def read_live_adapters(database_url: str, base_model: str | None = None) -> list[AdapterUpdated]:
    """The live version of every (language, base model) as an announcement (``action``
    ``promote``, no ``previous_version``, no reason), ordered by language and base model; only
    ``base_model``'s when given. A version that cannot form an announcement (no PEFT block
    recorded, a malformed stored field) is logged and left out."""
    from compass.sql.unit_of_work import open_store

    out: list[AdapterUpdated] = []
    with open_store(database_url, pool_size=1) as store, store() as uow:
        for adapter in uow.adapters.list_adapters():
            if base_model is not None and adapter.base_model != base_model:
                continue
            try:
                version = uow.adapters.active_version(adapter.language, adapter.base_model)
                if version is None:
                    continue
                out.append(
                    announcement(
                        version, previous_version=None, action="promote", reason="",
                        message_id=announcement_id(version.version_id, version.artifact_sha256),
                        created_at=version.activated_at,
                    )
                )  # fmt: skip
            except (DataError, ValueError, TypeError, KeyError) as exc:
                # an old row without a PEFT block: say so, keep the rest
                log.warning(
                    "serving.live_row_skipped",
                    language=adapter.language,
                    base_model=adapter.base_model,
                    reason=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
    return out
