"""Alembic migrations on SQLite and PostgreSQL: they build exactly ``storage.schema``, upgrade a
database made before migrations existed (sealing its audit history), and cost one query at head.
"""

from __future__ import annotations

import threading

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, select, text

from storage import audit, migrations
from storage.audit_chain import verify
from storage.database import Database
from storage.schema import AuditEvent, Base


def schema_differences(db: Database) -> list:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return migrations.current_revision(conn)


def test_head_constant_is_the_scripts_head():
    scripts = ScriptDirectory.from_config(migrations.alembic_config())
    assert scripts.get_heads() == [migrations.HEAD]


def test_migrations_build_exactly_the_declared_schema(database_url):
    db = Database(database_url)
    db.create_schema()
    assert revision(db) == migrations.HEAD
    assert schema_differences(db) == []


def test_downgrade_and_upgrade_again_round_trip(database_url):
    db = Database(database_url)
    db.create_schema()
    with db.engine.begin() as conn:
        command.downgrade(migrations.alembic_config(conn), "base")
    assert revision(db) is None
    db.create_schema()
    assert schema_differences(db) == []


def test_database_made_before_migrations_is_upgraded_and_its_history_sealed(database_url):
    db = Database(database_url)
    # The tables as create_all made them before this release, and no alembic_version.
    with db.engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), migrations.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
        for n in range(3):
            conn.execute(
                text(
                    "INSERT INTO audit_events (time, action, outcome, study_uid, detail) "
                    "VALUES (:t, 'instance.received', 'success', :uid, :d)"
                ),
                {"t": f"2025-01-0{n + 1} 10:00:00", "uid": f"1.2.{n}", "d": '{"size": 1}'},
            )
    db.create_schema()
    assert revision(db) == migrations.HEAD
    assert schema_differences(db) == []
    with db.transaction() as session:
        audit.record(session, "node.started")
    with db.transaction() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [e.chain_seq for e in events] == [1, 2, 3, 4]
        assert events[-1].action == "node.started"
        report = verify(session)
    assert report.ok and report.checked == 4


def test_create_schema_at_head_runs_no_ddl(database_url):
    db = Database(database_url)
    db.create_schema()
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    db.create_schema()
    assert not any(s.lstrip().upper().startswith(("CREATE", "ALTER")) for s in statements)
    assert len(statements) <= 4


def test_nodes_starting_together_migrate_once(database_url):
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Database(database_url).create_schema()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert revision(Database(database_url)) == migrations.HEAD
