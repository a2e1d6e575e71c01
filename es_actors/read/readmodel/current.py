"""Which instance of a projection is current: the one its views in ``main`` show.

A projection ``<name>`` may have several instances in the read-model file: the schema ``<name>``
(the version its code declared when the store first ran it) and versions a backfill built beside
(``<name>__v<N>``, recorded in ``es_actors.builds``). ``es_actors.current`` names the current one
once a cutover or rollback switched it; without a row, ``<name>`` is current (ADR-018).
"""

from __future__ import annotations

from typing import Any

import duckdb

from es_actors.read.projection import Projection


def first_row(result: duckdb.DuckDBPyConnection) -> Any:
    """A result's first row (None if none), the result read to its end (DuckDB refuses other work
    on a cursor whose result is not)."""
    rows = result.fetchall()
    return rows[0] if rows else None


def group_of(cur: duckdb.DuckDBPyConnection, instance: str) -> str:
    """The projection an instance is a version of (itself unless it is a backfill's build)."""
    row = first_row(cur.execute("SELECT projection FROM es_actors.builds WHERE instance = ?", [instance]))
    return str(row[0]) if row else instance


def current_instance(cur: duckdb.DuckDBPyConnection, projection: str) -> str | None:
    """The instance whose tables ``main`` shows for ``projection`` (None: no such projection)."""
    row = first_row(cur.execute("SELECT instance FROM es_actors.current WHERE projection = ?", [projection]))
    if row is not None:
        return str(row[0])
    row = first_row(cur.execute(
        "SELECT count(*) FROM es_actors.projections WHERE name = ? AND name NOT IN (SELECT instance FROM es_actors.builds)",
        [projection],
    ))
    return projection if row and row[0] else None


def is_current(cur: duckdb.DuckDBPyConnection, instance: str) -> bool:
    return current_instance(cur, group_of(cur, instance)) == instance


def shown_tables(cur: duckdb.DuckDBPyConnection, schema: str) -> list[str]:
    """The tables and views of a schema: each has a view in ``main`` while its instance is current."""
    return [r[0] for r in cur.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [schema]
    ).fetchall()]


def view_owner(cur: duckdb.DuckDBPyConnection, table: str, besides: str) -> str | None:
    """Another projection (not ``besides``) whose current instance has a table ``table``, and so
    the view ``main.<table>``."""
    groups = [r[0] for r in cur.execute(
        "SELECT name FROM es_actors.projections WHERE name NOT IN (SELECT instance FROM es_actors.builds) "
        "UNION SELECT projection FROM es_actors.current"
    ).fetchall()]
    for g in sorted(set(groups) - {besides}):
        inst = current_instance(cur, g)
        if inst is not None and table in shown_tables(cur, inst):
            return g
    return None


def runs_as(con: duckdb.DuckDBPyConnection, p: type[Projection]) -> type[Projection]:
    """The class a declared projection runs as: after a cutover to the version its code declares
    (a backfill's build), that build (``beside(p)``), so it is not rebuilt in place; else ``p``."""
    if getattr(p, "beside_of", None) is not None:
        return p
    cur = con.cursor()
    try:
        row = first_row(cur.execute(
            "SELECT b.instance FROM es_actors.current c JOIN es_actors.builds b ON b.instance = c.instance "
            "WHERE c.projection = ? AND b.version = ?", [p.name, p.version],
        ))
    finally:
        cur.close()
    if row is None:
        return p
    from es_actors.read.backfill.install import beside  # the build's class (install imports the read model)

    q: Any = beside(p)
    q.declared_as = p.name  # the name the code and its callers use (wait_for, the projector's check)
    return q  # type: ignore[no-any-return]
