"""Alembic migrations of the node's database, for SQLite and PostgreSQL alike.

Configured in code (no ``alembic.ini``), so nothing depends on the working directory. A new
schema change is a new revision in ``versions/`` and a new ``HEAD`` here; the tests check that
the migrations produce exactly ``storage.schema``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

HEAD = "0006_embeddings"
# The schema databases made before migrations existed have (``create_all`` of that time).
BASELINE = "0001_initial"
# Serialises migrations of several nodes starting at once against one PostgreSQL database.
_PG_LOCK_KEY = 0x63787200_6D696772  # "cxr\0migr"

log = logging.getLogger(__name__)


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, or None when it was never stamped."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    """Migrate the database to ``HEAD`` (a no-op costing one query when it is there).

    A database with the node's tables but no revision was made by ``create_all`` before
    migrations existed: it is stamped at ``BASELINE`` and upgraded from there.
    """
    with engine.connect() as connection:
        if current_revision(connection) == HEAD:
            return
    from alembic import command  # imported only when there is something to do

    with engine.begin() as connection:
        # SQLite: the node's transactions begin IMMEDIATE, which already serialises this.
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        revision = current_revision(connection)  # again, now that no one else migrates
        if revision == HEAD:
            return
        config = alembic_config(connection)
        if revision is None and inspect(connection).has_table("audit_events"):
            log.info("database predates migrations: stamping it at %s", BASELINE)
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")


def alembic_config(connection: Connection | None = None):
    """An Alembic ``Config`` for these migrations, bound to ``connection`` when given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config
