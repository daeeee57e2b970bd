"""The content digest of each processed event (issue 14): a re-used ``event_id`` is detected.

``processed_events.content_digest`` (``bytea``, 32 bytes, nullable) holds the SHA-256 of the
event's canonical content (:attr:`compass.core.events.PromptEvent.content_digest`). The stream
compares it for the ids it has seen before: the same digest is a redelivery (counted once, as
before), another one a re-used id, dead-lettered ``duplicate_event_id``. Rows written before this
migration keep ``NULL`` and are never called a conflict. Adding a nullable column without a
default rewrites nothing (a catalogue change only).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("processed_events", sa.Column("content_digest", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("processed_events", "content_digest")
