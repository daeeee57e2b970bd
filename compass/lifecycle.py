"""The adapter lifecycle behind ``compass adapters``: list, show, rollback, pin, unpin, retire.

Every change is one transaction that also appends a row to ``adapter_events`` (the history SQL
users query, docs/sql.md), so nothing happens to an adapter without a trace:

- **rollback** re-activates an earlier version (the live one becomes ``retired``) and writes an
  ``adapter-updated`` outbox row for it with ``action="rollback"`` and ``reason="rollback to
  vN: <why>"``, so subscribers (``compass serve-sync``) switch back through the same path as
  for a promotion. The message announces the earlier version's own name, artifact, manifest and
  PEFT block; ``previous_version`` is the version that was live.
- **pin** stops automatic promotion for a language: the worker still trains and records
  candidates, but its gate refuses them with a reason starting ``pinned`` (they stay
  ``candidate``, so a person can activate one with rollback). **unpin** lifts it.
- **retire** marks a candidate ``retired``; the live version cannot be retired (roll back to
  another first), a rejected one stays rejected.

Languages are canonical codes (the CLI normalises them); errors are
:class:`~compass.core.errors.DataError` with one line that says what to do.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from compass.core.errors import DataError
from compass.core.events import AdapterUpdated, PeftInfo
from compass.core.gate import finite_metrics
from compass.ports.storage import (
    AdapterEventRecord,
    AdapterRecord,
    AdapterVersionRecord,
    UnitOfWork,
)


def default_actor() -> str:
    """``user@host`` of this process (``unknown@host`` when the user cannot be read)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def peft_info(config: Mapping[str, Any]) -> PeftInfo:
    """The announcement's PEFT block from a version's stored ``peft_config`` (fields missing
    from versions written before issue 11 take their defaults); :class:`DataError` when the
    version recorded no PEFT settings."""
    try:
        return PeftInfo(
            type=str(config.get("type", "LORA")),
            r=int(config["r"]),
            alpha=float(config["alpha"]),
            target_modules=[str(m) for m in config["target_modules"]],
            modules_to_save=list(config.get("modules_to_save") or []) or None,
            use_dora=bool(config.get("use_dora", False)),
            dtype=config.get("dtype"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"the version's PEFT settings are incomplete ({exc})") from None


def announcement(
    version: AdapterVersionRecord,
    *,
    previous_version: int | None,
    action: str,
    reason: str,
    message_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
) -> AdapterUpdated:
    """The ``adapter-updated`` message that makes ``version`` live: a fresh ``message_id`` and
    ``created_at`` now unless given (a re-announcement of a live version passes its
    :func:`~compass.core.naming.announcement_id` and activation time); the version's finite
    metrics only (an announcement never carries NaN or ±∞). :class:`DataError` when the version
    recorded no PEFT settings, pydantic's ``ValidationError`` for a field the message rejects."""
    created = {} if created_at is None else {"created_at": created_at}
    return AdapterUpdated.model_validate(
        {
            **created,
            "message_id": message_id or uuid.uuid4(),
            "language": version.language,
            "base_model": version.base_model,
            "base_model_revision": version.base_model_revision,
            "adapter_id": f"{version.language}:{version.base_model}",
            "version": version.number,
            "adapter_name": version.adapter_name,
            "artifact_uri": version.artifact_uri,
            "manifest": version.manifest,
            "peft": peft_info(version.peft_config),
            "metrics": finite_metrics(version.metrics)[0],
            "previous_version": previous_version,
            "drift_id": version.drift_id,
            "action": action,
            "reason": reason[:2000],
        }
    )


@dataclass(frozen=True)
class AdapterOverview:
    """An adapter and its live version (``None`` before the first promotion)."""

    adapter: AdapterRecord
    live: AdapterVersionRecord | None


@dataclass(frozen=True)
class AdapterDetail:
    """An adapter, every version by number and its lifecycle events, oldest first."""

    adapter: AdapterRecord
    versions: list[AdapterVersionRecord]
    events: list[AdapterEventRecord]


@dataclass(frozen=True)
class Rollback:
    """What a rollback did: the version now live, the one it replaced, the event and message."""

    version: AdapterVersionRecord
    replaced: int | None
    event: AdapterEventRecord
    message: AdapterUpdated


class AdapterLifecycle:
    """The lifecycle commands of the adapters of one base model; ``topic`` is where
    announcements go (through the outbox), ``actor`` who is recorded as acting."""

    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        base_model: str,
        *,
        topic: str = "adapter-updated",
        actor: str | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self.base_model = base_model
        self.topic = topic
        self.actor = actor or default_actor()

    def _adapter(self, uow: UnitOfWork, language: str) -> AdapterRecord:
        adapter = uow.adapters.get_adapter(language, self.base_model)
        if adapter is None:
            raise DataError(
                f"no {language} adapter of {self.base_model} (see compass adapters list)"
            )
        return adapter

    def overview(self) -> list[AdapterOverview]:
        """Every adapter of the base model with its live version, by language."""
        with self._uow_factory() as uow:
            adapters = [a for a in uow.adapters.list_adapters() if a.base_model == self.base_model]
            return [
                AdapterOverview(a, uow.adapters.active_version(a.language, a.base_model))
                for a in adapters
            ]

    def show(self, language: str) -> AdapterDetail:
        """The adapter of ``language``, its versions and its history."""
        with self._uow_factory() as uow:
            adapter = self._adapter(uow, language)
            return AdapterDetail(
                adapter,
                uow.adapters.list_versions(adapter.adapter_id),
                uow.adapters.list_events(adapter.adapter_id),
            )

    def rollback(self, language: str, reason: str, to: int | None = None) -> Rollback:
        """Re-activate version ``to`` (default: the most recently live version before the
        current one) and announce it, in one transaction. :class:`DataError` when there is no
        such version, it is the live one, it was rejected, or its PEFT settings are missing."""
        with self._uow_factory() as uow:
            adapter = self._adapter(uow, language)
            live = uow.adapters.active_version(language, self.base_model)
            number = to if to is not None else _previous_live(uow, adapter, live)
            if live is not None and live.number == number:
                raise DataError(f"{language} v{number} is already live")
            target = uow.adapters.get_version(adapter.adapter_id, number)
            if target is None:
                raise DataError(f"{language} has no version {number}")
            version = uow.adapters.activate_version(adapter.adapter_id, number)
            why = f"rollback to v{number}: {reason}" if reason else f"rollback to v{number}"
            event = uow.adapters.record_event(
                adapter.adapter_id, "rollback", version=number, reason=why, actor=self.actor
            )
            previous = live.number if live is not None else None
            message = announcement(
                version, previous_version=previous, action="rollback", reason=why
            )
            uow.outbox.add_outbox(self.topic, language, message.model_dump(mode="json"))
            uow.commit()
        return Rollback(version, previous, event, message)

    def pin(self, language: str, reason: str = "") -> AdapterRecord:
        """Stop automatic promotion for ``language`` until :meth:`unpin`."""
        return self._set_pin(language, True, reason)

    def unpin(self, language: str, reason: str = "") -> AdapterRecord:
        """Let the worker promote ``language``'s candidates again."""
        return self._set_pin(language, False, reason)

    def _set_pin(self, language: str, pinned: bool, reason: str) -> AdapterRecord:
        with self._uow_factory() as uow:
            adapter = self._adapter(uow, language)
            updated = uow.adapters.set_pinned(adapter.adapter_id, pinned, reason)
            uow.adapters.record_event(
                adapter.adapter_id, "pin" if pinned else "unpin", reason=reason, actor=self.actor
            )
            uow.commit()
        return updated

    def retire(self, language: str, number: int, reason: str = "") -> AdapterVersionRecord:
        """Mark candidate ``number`` retired (:class:`DataError` for the live or a rejected
        version)."""
        with self._uow_factory() as uow:
            adapter = self._adapter(uow, language)
            version = uow.adapters.retire_version(adapter.adapter_id, number)
            uow.adapters.record_event(
                adapter.adapter_id, "retire", version=number, reason=reason, actor=self.actor
            )
            uow.commit()
        return version


def _previous_live(
    uow: UnitOfWork, adapter: AdapterRecord, live: AdapterVersionRecord | None
) -> int:
    earlier = [
        v
        for v in uow.adapters.list_versions(adapter.adapter_id)
        if v.status == "retired"
        and v.activated_at is not None
        and (live is None or v.number != live.number)
    ]
    if not earlier:
        raise DataError(f"{adapter.language} has no earlier live version to roll back to")
    return max(earlier, key=lambda v: (v.activated_at, v.number)).number
