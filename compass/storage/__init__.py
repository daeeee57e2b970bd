"""Storage: PostgreSQL schema (Alembic), repositories and the unit of work.

The interfaces and records live in :mod:`compass.storage.ports` (no SQLAlchemy there); the SQL
implementation in :mod:`compass.storage.sql`; migrations in ``migrations/`` driven by
:mod:`compass.storage.migrate`.
"""
