"""Pure parts of storage: the unit-of-work protocol, records, the migration chain, the docs."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from compass.ports.storage import (
    AdapterVersionRecord,
    ClusterCount,
    PurgeResult,
    UnitOfWork,
    UsageObservation,
)
from compass.sql import migrate
from compass.sql.tables import metadata

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"


class DictUnitOfWork(UnitOfWork):
    """A unit of work over a dict: what is staged reaches ``committed`` only on commit()."""

    def __init__(self, committed: dict[str, int]) -> None:
        self.committed = committed
        self.staged: dict[str, int] = {}
        self.open = False

    def _begin(self) -> None:
        self.open = True

    def _end(self) -> None:
        self.open = False

    def commit(self) -> None:
        self.committed.update(self.staged)
        self.staged.clear()

    def rollback(self) -> None:
        self.staged.clear()


def test_unit_of_work_keeps_only_committed_work() -> None:
    store: dict[str, int] = {}
    uow = DictUnitOfWork(store)  # one object reused: leftovers would leak into a later commit
    with uow:
        uow.staged["forgotten"] = 1  # no commit
    with pytest.raises(ValueError), uow:
        uow.staged["failed"] = 2
        raise ValueError("boom")
    with uow:
        uow.staged["kept"] = 3
        uow.commit()
        uow.staged["after-commit"] = 4  # the next transaction, never committed
    with uow:
        uow.commit()
    assert store == {"kept": 3}
    assert not uow.open


def test_records() -> None:
    observation = UsageObservation("e1", "sw", 3, datetime(2026, 1, 1, tzinfo=UTC), 60, 1)
    assert observation.sampled and observation.weight == 1.0
    total, sampled = ClusterCount(2.5, 2)
    assert (total, sampled) == (2.5, 2)
    assert PurgeResult(1, 2, 3, 4).total == 10
    fields = {name: None for name in AdapterVersionRecord.__dataclass_fields__}
    version = AdapterVersionRecord(**{**fields, "language": "pt-BR", "number": 7})  # type: ignore[arg-type]
    assert version.adapter_name == "pt-BR-v7"


def test_migrations_form_one_linear_chain() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config("postgresql+psycopg://x/y"))
    revisions = list(script.walk_revisions())  # newest first
    assert len(script.get_heads()) == 1 and migrate.head() == revisions[0].revision
    assert revisions[-1].down_revision is None
    for newer, older in itertools.pairwise(revisions):
        assert newer.down_revision == older.revision
    for revision in revisions:
        assert callable(revision.module.downgrade)


def test_docs_document_every_model_table_and_enough_examples() -> None:
    doc = DOC.read_text(encoding="utf-8")
    headings = set(re.findall(r"^### ([a-z_]+)$", doc, flags=re.MULTILINE))
    assert set(metadata.tables) <= headings
    examples = re.findall(r"```sql\n-- example: ([a-z0-9-]+)\n", doc)
    assert len(examples) >= 8 and len(set(examples)) == len(examples)
