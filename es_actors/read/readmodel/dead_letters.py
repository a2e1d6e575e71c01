"""The dead-letter table: events a projection with ``on_error="park"`` could not apply, kept
with their stored row and error until a retry applies them."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow as pa

from es_actors.codecs.rows import COL, rows_to_table, table_to_rows
from es_actors.read.readmodel.database import fetch_arrow
from es_actors.storage.local.follower import Batch


def insert_dead_letters(cur: duckdb.DuckDBPyConnection, name: str, table: pa.Table, error: str, attempts: int) -> None:
    """Park the rows of ``table`` (inside the caller's transaction)."""
    for r in table_to_rows(table):
        cur.execute(
            "INSERT OR REPLACE INTO es_actors.dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)",
            [name, r[COL["partition"]], r[COL["position"]], r[COL["aggregate_type"]], r[COL["aggregate_id"]],
             r[COL["version"]], r[COL["event_type"]], r[COL["schema_version"]], r[COL["payload"]], error, attempts,
             json.dumps(list(r))],
        )


def list_dead_letters(con: duckdb.DuckDBPyConnection, name: str | None = None) -> pa.Table:
    """Parked events, of one projection or all, in (projection, partition, position) order."""
    sql = "SELECT * FROM es_actors.dead_letters"
    params: list[Any] = []
    if name is not None:
        sql += " WHERE projection = ?"
        params.append(name)
    return fetch_arrow(con.cursor(), sql + " ORDER BY projection, partition, position", params or None)


def parked_batches(cur: duckdb.DuckDBPyConnection, name: str) -> list[Batch]:
    """Each parked event of a projection as a one-event batch, in position order."""
    rows = cur.execute(
        "SELECT partition, position, stored_row FROM es_actors.dead_letters WHERE projection = ? "
        "ORDER BY partition, position",
        [name],
    ).fetchall()
    return [
        Batch(int(partition), int(position), int(position), table=rows_to_table([tuple(json.loads(stored))]))
        for partition, position, stored in rows
    ]


def delete_dead_letter(cur: duckdb.DuckDBPyConnection, name: str, partition: int, position: int) -> None:
    cur.execute(
        "DELETE FROM es_actors.dead_letters WHERE projection = ? AND partition = ? AND position = ?",
        [name, partition, position],
    )


def record_failed_retry(cur: duckdb.DuckDBPyConnection, name: str, partition: int, position: int, error: str) -> None:
    cur.execute(
        "UPDATE es_actors.dead_letters SET error = ?, attempts = attempts + 1 "
        "WHERE projection = ? AND partition = ? AND position = ?",
        [error, name, partition, position],
    )
