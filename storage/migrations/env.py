"""Alembic environment: always online, on the connection ``storage.migrations`` hands over.

The caller has already begun the transaction (and, on PostgreSQL, taken the migration lock), so
Alembic runs every revision inside it: a failed upgrade leaves the schema as it was.
"""

from __future__ import annotations

from alembic import context

from storage.schema import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("cxrnode migrations run only through storage.migrations.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    transactional_ddl=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
