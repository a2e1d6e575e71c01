"""Checkpoints (each projection's applied position per partition) and the paused flag, as
stored in the read-model file; and the status a store reports from them when no projector
runs. A checkpoint is written in the transaction of the batch it follows, so a batch that
is delivered again after a crash is never applied twice (ADR-004)."""

from __future__ import annotations

import time
from typing import Any

import duckdb

from es_actors.read.readmodel.database import connect_restricted, open_error, readmodel_path
from es_actors.storage.backends import durable_heads, open_backend, recorded_at
from es_actors.storage.layout import StoreLayout


def load_checkpoints(con: duckdb.DuckDBPyConnection, name: str) -> dict[int, int]:
    """Partition -> last applied position of a projection (partitions never applied are absent)."""
    rows = con.cursor().execute(
        "SELECT partition, position FROM es_actors.checkpoints WHERE projection = ?", [name]
    ).fetchall()
    return {int(p): int(pos) for p, pos in rows}


def set_checkpoint(cur: duckdb.DuckDBPyConnection, name: str, partition: int, position: int) -> None:
    """Move a projection's checkpoint in one partition (inside the batch's transaction)."""
    cur.execute(
        "INSERT INTO es_actors.checkpoints VALUES (?, ?, ?, NULL, now()) "
        "ON CONFLICT (projection, partition) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        [name, partition, position],
    )


def is_paused(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.cursor().execute("SELECT paused FROM es_actors.projections WHERE name = ?", [name]).fetchone()
    return bool(row and row[0])


def set_paused(con: duckdb.DuckDBPyConnection, name: str, paused: bool) -> None:
    """Stored, so a paused projection stays paused when its projector restarts."""
    con.cursor().execute("UPDATE es_actors.projections SET paused = ? WHERE name = ?", [paused, name])


def committed_status(layout: StoreLayout, partitions: int) -> list[dict[str, Any]]:
    """Projection status from the read-model file when no projector runs: the committed
    checkpoints against each partition's durable head (status "stopped"); lag in seconds from
    the ``recorded_at`` of the first event not applied (None if it cannot be read)."""
    path = readmodel_path(layout.read_model_root)
    if not path.exists():
        return []
    try:
        con = connect_restricted(str(path), layout.read_model_root, read_only=True)
    except duckdb.Error as exc:
        raise open_error(path, exc) from None  # held by a projector, or corrupt: named as such
    try:
        heads = durable_heads(layout, partitions)
        projections = con.execute("SELECT name, version, kind, paused FROM es_actors.projections ORDER BY name").fetchall()
        cps = {(n, p): pos for n, p, pos in con.execute("SELECT projection, partition, position FROM es_actors.checkpoints").fetchall()}
        parked = dict(con.execute("SELECT projection, count(*) FROM es_actors.dead_letters GROUP BY ALL").fetchall())
    finally:
        con.close()
    now_us = time.time_ns() // 1000
    backend = open_backend(layout.uri)
    since: dict[tuple[int, int], int | None] = {}  # (partition, checkpoint) -> recorded_at of the next event

    def lag_seconds(p: int, cp: int) -> float | None:
        if heads[p] <= cp:
            return 0.0
        if (p, cp) not in since:
            since[(p, cp)] = recorded_at(layout, backend, p, cp + 1)
        at = since[(p, cp)]
        return None if at is None else round(max(0.0, (now_us - at) / 1e6), 3)

    rows = []
    for name, version, kind, paused in projections:
        for p in range(partitions):
            cp = cps.get((name, p), 0)
            rows.append({
                "projection": name, "version": version, "kind": kind, "partition": p, "checkpoint": cp,
                "head": heads[p], "lag_events": max(0, heads[p] - cp), "lag_seconds": lag_seconds(p, cp),
                "status": "paused" if paused else "stopped", "last_error": None, "events_per_s": 0.0,
                "applied": None, "dead_letters": parked.get(name, 0),
            })
    return rows
