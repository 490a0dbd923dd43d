"""Append-only tables: triggers that refuse UPDATE and DELETE (SQLite and PostgreSQL dialects)."""

from __future__ import annotations

from sqlalchemy import Connection, Table, event
from sqlalchemy import text as sql_text

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION cellwatch_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
    MESSAGE = TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused';
END $$"""


def guard_names(table: str) -> tuple[str, ...]:
    """Names of the triggers that make `table` append-only (PostgreSQL adds a TRUNCATE one)."""
    return (f"{table}_no_update", f"{table}_no_delete")


def guard_ddl(dialect: str, table: str) -> list[str]:
    """CREATE statements of the append-only triggers of `table` for 'sqlite' or 'postgresql'."""
    upd, dele = guard_names(table)
    if dialect == "sqlite":
        return [f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {op} ON {table} BEGIN "
                f"SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
                for name, op in ((upd, "UPDATE"), (dele, "DELETE"))]
    if dialect == "postgresql":
        each = "FOR EACH ROW EXECUTE FUNCTION cellwatch_append_only()"
        return [_PG_FUNCTION,
                f"CREATE OR REPLACE TRIGGER {upd} BEFORE UPDATE ON {table} {each}",
                f"CREATE OR REPLACE TRIGGER {dele} BEFORE DELETE ON {table} {each}",
                (f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                 "FOR EACH STATEMENT EXECUTE FUNCTION cellwatch_append_only()")]
    raise NotImplementedError(f"append-only triggers for {dialect!r}: write them in guard_ddl")


def install_guards(conn: Connection, table: str) -> None:
    """(Re)create the append-only triggers of `table` on this connection's database."""
    for stmt in guard_ddl(conn.dialect.name, table):
        conn.exec_driver_sql(stmt)


def missing_guards(conn: Connection, table: str) -> list[str]:
    """Append-only triggers of `table` that are not in the database (dropped by someone)."""
    if conn.dialect.name == "sqlite":
        stmt = sql_text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t")
    else:
        stmt = sql_text("SELECT tgname FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) "
                        "AND NOT tgisinternal")
    present = set(conn.scalars(stmt, {"t": table}))
    return [name for name in guard_names(table) if name not in present]


GUARDED: list[str] = []  # every append-only table, so `AuditTrail.verify` checks all triggers


def append_only(table: Table) -> None:
    """Install `table`'s append-only triggers whenever `metadata.create_all` creates it."""
    GUARDED.append(table.name)
    event.listen(table, "after_create",
                 lambda target, connection, **_: install_guards(connection, target.name))
