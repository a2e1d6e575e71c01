"""The operations log in the read-model file (``es_actors.operations``): an operation commits a
``started`` row before its work and a row with its outcome (``done`` in the switch's own
transaction, ``refused`` or ``failed``) after, both under one ``op`` id. The ``started`` row
names the process (host, pid and its start time): while that process lives the operation is
listed as ``running``; once it is gone without an outcome (killed part-way), ``interrupted``;
on another host, where this process cannot tell, ``unknown``. An operation refused before it
started (unknown version, nothing to roll back, ...) is one ``refused`` row (:func:`refused`).
Who did it and why are self-declared (no authorization exists yet); both are required.

Also the crash points of ADR-018: ``ES_ACTORS_VERSIONS_CRASH_AT=<step>`` makes the process kill
itself (SIGKILL) at that step, so a test can prove what a kill there leaves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from typing import Any

import duckdb

from es_actors.read.readmodel.current import first_row
from es_actors.errors import EsActorsError
from es_actors.read.readmodel.database import transaction

CRASH_ENV = "ES_ACTORS_VERSIONS_CRASH_AT"
#: The steps a kill is tested at (tests/test_versions.py): what each leaves is in ADR-018.
CRASH_STEPS = ("started", "checked", "switch", "committed")


def crash_point(step: str) -> None:
    """Die here (SIGKILL, no clean-up) if the environment names this step."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def require_who(principal: str, reason: str) -> None:
    if not (principal or "").strip() or not (reason or "").strip():
        raise EsActorsError("an operation on projection versions needs a principal and a reason (both are recorded)")


def _row(
    cur: duckdb.DuckDBPyConnection, op: int | None, operation: str, projection: str, from_instance: str | None,
    to_instance: str | None, principal: str, reason: str, forced: bool, outcome: str, detail: Any,
) -> int:
    row = first_row(cur.execute("SELECT coalesce(max(id), 0) + 1 FROM es_actors.operations"))
    new_id = int(row[0]) if row else 1
    cur.execute(
        "INSERT INTO es_actors.operations VALUES (?, ?, now(), ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [new_id, op if op is not None else new_id, operation, projection, from_instance, to_instance, principal, reason,
         forced, outcome, None if detail is None else json.dumps(detail, default=str)],
    )
    return new_id


class Operation:
    """One operation's rows in the log."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, operation: str, projection: str, from_instance: str | None,
        to_instance: str | None, principal: str, reason: str, forced: bool,
    ) -> None:
        self.args = (operation, projection, from_instance, to_instance, principal, reason, forced)
        self.con = con
        cur = con.cursor()
        try:
            with transaction(cur):
                self.id = _row(cur, None, *self.args, "started", this_process())
        finally:
            cur.close()

    def finish_in(self, cur: duckdb.DuckDBPyConnection, outcome: str, detail: Any = None) -> None:
        """The outcome row, inside the caller's transaction (``done`` commits with the switch)."""
        _row(cur, self.id, *self.args, outcome, detail)

    def finish(self, outcome: str, detail: Any = None) -> None:
        """The outcome row, in a transaction of its own."""
        cur = self.con.cursor()
        try:
            with transaction(cur):
                self.finish_in(cur, outcome, detail)
        finally:
            cur.close()


def refused(
    con: duckdb.DuckDBPyConnection, operation: str, projection: str, from_instance: str | None, to_instance: str | None,
    principal: str, reason: str, forced: bool, error: str,
) -> None:
    """An operation refused before it started: one row, its outcome ``refused`` with the error."""
    cur = con.cursor()
    try:
        with transaction(cur):
            _row(cur, None, operation, projection, from_instance, to_instance, principal, reason, forced, "refused",
                 {"problems": [error], "before_start": True})
    finally:
        cur.close()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken
    for the process that recorded it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict[str, Any]:
    """What the ``started`` row records of the process doing the operation."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _start_time(os.getpid())}


def _state_without_outcome(started: Any) -> str:
    """``running``, ``interrupted`` or ``unknown`` (another host) for a started row without an outcome."""
    who = started if isinstance(started, dict) else {}
    if who.get("host") != socket.gethostname() or not isinstance(who.get("pid"), int):
        return "unknown" if who.get("host") else "interrupted"
    try:
        os.kill(who["pid"], 0)
    except ProcessLookupError:
        return "interrupted"
    except PermissionError:
        pass  # alive, another user's
    return "running" if _start_time(who["pid"]) == who.get("pid_started") else "interrupted"


def last_switch(cur: duckdb.DuckDBPyConnection, projection: str) -> tuple[str | None, str | None, str] | None:
    """(from, to, which operation) of the projection's last cutover or rollback that was done."""
    row = first_row(cur.execute(
        "SELECT from_instance, to_instance, operation FROM es_actors.operations WHERE projection = ? AND outcome = 'done' "
        "AND operation IN ('cutover', 'rollback') ORDER BY id DESC LIMIT 1", [projection],
    ))
    return (row[0], row[1], str(row[2])) if row else None


def operations(con: duckdb.DuckDBPyConnection, projection: str | None = None) -> list[dict[str, Any]]:
    """One entry per operation, oldest first: its start, its outcome (``interrupted``: none was
    recorded, the process died part-way) and the outcome's detail."""
    cur = con.cursor()
    try:
        rows = cur.execute(
            "SELECT s.op, s.recorded_at, s.operation, s.projection, s.from_instance, s.to_instance, s.principal, s.reason, s.forced, "
            "CASE WHEN s.outcome = 'refused' THEN 'refused' ELSE o.outcome END, "
            "CASE WHEN s.outcome = 'refused' THEN s.recorded_at ELSE o.recorded_at END, coalesce(o.detail, s.detail) "
            "FROM es_actors.operations s "
            "LEFT JOIN es_actors.operations o ON o.op = s.op AND o.id <> s.id "
            "WHERE s.outcome IN ('started', 'refused') AND s.id = s.op AND (? IS NULL OR s.projection = ?) ORDER BY s.op",
            [projection, projection],
        ).fetchall()
    finally:
        cur.close()
    keys = ("id", "at", "operation", "projection", "from_instance", "to_instance", "principal", "reason", "forced",
            "outcome", "finished_at", "detail")
    out = []
    for r in rows:
        d = dict(zip(keys, r))
        d["detail"] = None if d["detail"] is None else json.loads(d["detail"])
        if d["outcome"] is None:  # no outcome yet: its process still runs it, or died part-way
            d["outcome"] = _state_without_outcome(d["detail"])
        d["at"] = str(d["at"])
        d["finished_at"] = None if d["finished_at"] is None else str(d["finished_at"])
        out.append(d)
    return out
