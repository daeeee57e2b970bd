"""PostgreSQL: the tables (:mod:`compass.sql.tables`), the repositories and the unit of work.

The interfaces and records live in :mod:`compass.ports.storage` (no SQLAlchemy there); the SQL
implementation in :mod:`compass.sql.unit_of_work`; migrations in ``migrations/`` driven by
:mod:`compass.sql.migrate`; the embedded server (``pgserver``) in :mod:`compass.sql.server`.
"""
