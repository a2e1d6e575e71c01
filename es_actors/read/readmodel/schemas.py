"""Each projection's DuckDB schema: created (with a view per table in ``main``) when the
projection is first registered, dropped and created again when its version changes, so the
read model is rebuilt from the log."""

from __future__ import annotations

import logging

import duckdb

from es_actors.errors import EsActorsError
from es_actors.read.projection import Projection
from es_actors.read.readmodel.current import current_instance, group_of, is_current, shown_tables, view_owner
from es_actors.read.readmodel.database import transaction

log = logging.getLogger(__name__)


def open_projection(con: duckdb.DuckDBPyConnection, p: type[Projection]) -> duckdb.DuckDBPyConnection:
    """The projection's own cursor (``search_path`` its schema), its schema set up first if new
    or rebuilt if its version changed."""
    cur = con.cursor()
    built = cur.execute("SELECT projection, version FROM es_actors.builds WHERE instance = ?", [p.name]).fetchone()
    if built is not None and getattr(p, "beside_of", None) is None:
        raise EsActorsError(
            f"projection {p.name!r}: that name is the version a backfill built beside projection {built[0]!r} "
            f"(v{built[1]}); rename the projection"
        )
    row = cur.execute("SELECT version FROM es_actors.projections WHERE name = ?", [p.name]).fetchone()
    if row is not None and row[0] != p.version:
        log.warning("projection %s: version %s in the read model, %s in code: rebuilding from the log", p.name, row[0], p.version)
        drop_projection(cur, p.name)
        row = None
    if row is None:
        try:
            with transaction(cur):
                _create(cur, p)
        except EsActorsError:
            raise
        except Exception as exc:
            raise EsActorsError(f"projection {p.name!r}: setup failed: {exc}") from None
    cur.execute(f"SET search_path = '{p.name}'")
    return cur


def _create(cur: duckdb.DuckDBPyConnection, p: type[Projection]) -> None:
    cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{p.name}"')
    cur.execute(f"SET search_path = '{p.name}'")
    for stmt in p.setup_statements():
        cur.execute(stmt)
    cur.execute("INSERT INTO es_actors.projections VALUES (?, ?, ?, false, now())", [p.name, p.version, p.kind])
    if current_instance(cur, p.name) != p.name:
        return  # another version of it is current (a cutover switched main to it): its views stay
    for table in shown_tables(cur, p.name):
        other = view_owner(cur, table, p.name)
        if other is not None:  # its view would silently replace the other's (and be dropped with it)
            raise EsActorsError(
                f"projection {p.name!r}: setup failed: table {table!r} is also a table of projection {other!r}: "
                f"the view main.{table} can show only one of them; name the tables differently"
            )
        cur.execute(f'CREATE OR REPLACE VIEW main."{table}" AS SELECT * FROM "{p.name}"."{table}"')


def drop_projection(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Remove a projection's schema, views, checkpoints and dead letters (never another's view)."""
    with transaction(cur):
        drop_in_transaction(cur, name)


def drop_in_transaction(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """:func:`drop_projection`'s work inside the caller's transaction. The views in ``main`` go
    only with the current instance of a projection (rebuilt in place); a current build is refused
    (cut over to another version first)."""
    current = is_current(cur, name)
    group = group_of(cur, name)
    if current and group != name:
        raise EsActorsError(
            f"{name!r} is the current version of projection {group!r}: cut over (or roll back) to another version "
            "before replacing or dropping it"
        )
    if current:
        for table in shown_tables(cur, name):
            if view_owner(cur, table, name) is None:
                cur.execute(f'DROP VIEW IF EXISTS main."{table}"')
    cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    for t, col in (("projections", "name"), ("checkpoints", "projection"), ("dead_letters", "projection"), ("builds", "instance")):
        cur.execute(f"DELETE FROM es_actors.{t} WHERE {col} = ?", [name])
