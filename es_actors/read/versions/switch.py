"""The switch itself: the views in ``main`` point at another instance of a projection and
``es_actors.current`` names it, in the caller's transaction (DuckDB's DDL is transactional, so
the views, the current row and the operations log's ``done`` row commit together or not at all)."""

from __future__ import annotations

import duckdb

from es_actors.errors import EsActorsError
from es_actors.read.readmodel.current import current_instance, shown_tables, view_owner


def switch_views(cur: duckdb.DuckDBPyConnection, projection: str, from_instance: str, to_instance: str, version: int) -> None:
    now = current_instance(cur, projection)
    if now != from_instance:
        raise EsActorsError(f"projection {projection!r}: its current version changed meanwhile ({from_instance!r} -> {now!r})")
    new = shown_tables(cur, to_instance)
    for table in new:
        other = view_owner(cur, table, projection)
        if other is not None:
            raise EsActorsError(
                f"{to_instance!r} has a table {table!r}, and main.{table} shows projection {other!r}: name the tables differently"
            )
        cur.execute(f'CREATE OR REPLACE VIEW main."{table}" AS SELECT * FROM "{to_instance}"."{table}"')
    for table in shown_tables(cur, from_instance):
        if table not in new:
            cur.execute(f'DROP VIEW IF EXISTS main."{table}"')
    cur.execute(
        "INSERT INTO es_actors.current VALUES (?, ?, ?, now()) ON CONFLICT (projection) DO UPDATE SET "
        "instance = excluded.instance, version = excluded.version, switched_at = excluded.switched_at",
        [projection, to_instance, version],
    )
