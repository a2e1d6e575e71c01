"""Versions of a projection: list them, check a candidate against the current one, cut over,
roll back, drop (ADR-018). Free of Ray: the projector actor calls it on its own read model (with
its runner, so the versions it follows are held still while compared and stop before they are
dropped); without a projector, :func:`in_process` runs it on the read-model file directly.

- :mod:`.check`: the comparison and the declared ``cutover_checks``;
- :mod:`.switch`: the views in ``main`` and ``es_actors.current``, in one transaction;
- :mod:`.oplog`: the operations log and the crash points of the tests.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import duckdb

from es_actors.errors import CutoverRefused, EsActorsError, ProjectionStalled
from es_actors.read.progress import batch_since
from es_actors.read.readmodel.current import first_row, current_instance
from es_actors.read.readmodel.database import SYSTEM_DDL, connect_restricted, open_error, readmodel_path, transaction
from es_actors.read.readmodel.schemas import drop_in_transaction
from es_actors.read.versions import oplog
from es_actors.read.versions.check import compare, run_checks
from es_actors.read.versions.oplog import Operation, crash_point, require_who
from es_actors.read.versions.switch import switch_views
from es_actors.storage.layout import StoreLayout
from es_actors.storage.backends import durable_heads

__all__ = ["Versions", "in_process", "CRASH_STEPS"]
CRASH_STEPS = oplog.CRASH_STEPS

#: Operations that switch or drop, one at a time per (read-model file, projection) in this process
#: (the file's writer): an operation on one projection never waits for another projection's.
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
#: How long an operation waits for another on the same projection before it is refused.
OPERATION_WAIT_S = 30.0
#: How long an operation waits for a followed version's cursor (its batch in flight to end)
#: before it is refused naming the version stalled in its handler.
HOLD_S = 5.0


def _valid_version(version: Any) -> int:
    """Versions are whole numbers from 1: anything else is refused as bad input, before anything is looked up."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EsActorsError(f"a projection version is a whole number from 1, not {version!r}")
    return version


class Versions:
    """The version operations on one open read-model file. ``runner``: the projector's (None in
    process: nothing follows the log meanwhile)."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, layout: StoreLayout, partitions: int, runner: Any = None,
        load: Callable[[bytes], Any] = pickle.loads, follow_s: float = 10.0,
    ) -> None:
        self.con, self.layout, self.partitions, self.runner, self.load = con, layout, partitions, runner, load
        self.follow_s = follow_s  # how long a followed candidate may take to reach the heads before it counts as behind
        self.hold_s = HOLD_S

    @contextmanager
    def _one_at_a_time(self, projection: str) -> Iterator[None]:
        """This projection's operations one at a time (others' run meanwhile); refused after OPERATION_WAIT_S."""
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault((str(self.layout.root), projection), threading.Lock())
        if not lock.acquire(timeout=OPERATION_WAIT_S):
            raise EsActorsError(f"another operation on projection {projection!r} is in progress; try again once it has ended")
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _refusals(self, operation: str, projection: str, principal: str, reason: str, force: bool) -> Iterator[list[Any]]:
        """An error before the operation starts (before the yielded list gets its Operation) is
        recorded as its refusal (ADR-018), then raised."""
        started: list[Any] = []
        try:
            yield started
        except EsActorsError as exc:
            if not started:
                oplog.refused(self.con, operation, projection, None, None, principal, reason, force, str(exc))
            raise

    # -- what there is ---------------------------------------------------------------------

    def _instances(self, projection: str | None = None) -> list[dict[str, Any]]:
        rows = self.con.cursor().execute(
            "SELECT p.name, p.version, coalesce(b.projection, p.name), b.instance IS NOT NULL, p.paused "
            "FROM es_actors.projections p LEFT JOIN es_actors.builds b ON b.instance = p.name ORDER BY 3, 2, 1"
        ).fetchall()
        return [{"instance": i, "version": v, "projection": g, "build": bool(b), "paused": bool(pa)}
                for i, v, g, b, pa in rows if projection is None or g == projection]

    def _current(self, projection: str) -> str:
        inst = current_instance(self.con.cursor(), projection)
        if inst is None:
            names = sorted({r["projection"] for r in self._instances()})
            raise EsActorsError(f"no projection {projection!r} in the read model; it has {names}")
        return inst

    def _resolve(self, projection: str, version: int, current: str) -> str:
        """The instance of ``version`` (a version held twice: the one that is not current)."""
        found = [r["instance"] for r in self._instances(projection) if r["version"] == version]
        if not found:
            have = [(r["instance"], r["version"]) for r in self._instances(projection)]
            raise EsActorsError(f"projection {projection!r} has no version {version} (it has {have}); build it with "
                                f"`es-actors backfill {projection} --version {version}`")
        others = [i for i in found if i != current]
        return others[0] if others else found[0]

    def _heads(self) -> dict[int, int]:
        return durable_heads(self.layout, self.partitions)

    def _lag(self, instance: str, heads: dict[int, int]) -> int:
        cps = {int(p): int(pos) for p, pos in self.con.cursor().execute(
            "SELECT partition, position FROM es_actors.checkpoints WHERE projection = ?", [instance]).fetchall()}
        return sum(max(0, h - cps.get(p, 0)) for p, h in heads.items())

    def _followed(self, instance: str) -> bool:
        return self.runner is not None and instance in self.runner.states

    def versions(self) -> list[dict[str, Any]]:
        """Every instance of every projection: version, whether it is current, followed, its status and lag."""
        heads = self._heads()
        out = []
        for r in self._instances():
            followed = self._followed(r["instance"])
            if followed:
                status = self.runner.status_of(r["instance"])
            else:
                status = "paused" if r["paused"] else ("stopped" if self.runner is None else "not followed")
            out.append({**r, "current": current_instance(self.con.cursor(), r["projection"]) == r["instance"],
                        "followed": followed, "status": status, "lag_events": self._lag(r["instance"], heads)})
        return out

    def operations(self, projection: str | None = None) -> list[dict[str, Any]]:
        return oplog.operations(self.con, projection)

    # -- check -------------------------------------------------------------------------------

    def _refuse_if_stalled(self, instance: str) -> None:
        """A followed version whose batch has been in its handler longer than ``hold_s`` is stalled:
        nothing can be compared or switched while it is (ProjectionStalled names it)."""
        st = self.runner.states[instance] if self._followed(instance) else None
        if st is not None and st.batch_since_us is not None and time.time() - st.batch_since_us / 1e6 > self.hold_s:
            raise ProjectionStalled(f"{instance} is stalled in its handler since {batch_since(st)}: pause it or fix "
                                    "its handler, then try again")

    def _settle(self, instance: str, heads: dict[int, int]) -> None:
        """Give a version the projector follows up to ``follow_s`` to reach ``heads``, refused as
        soon as its batch has been in its handler longer than ``hold_s`` (ProjectionStalled)."""
        if not self._followed(instance):
            return
        want = {p: h for p, h in heads.items() if h > 0}
        deadline = time.monotonic() + self.follow_s
        while True:
            self._refuse_if_stalled(instance)
            left = deadline - time.monotonic()
            try:
                self.runner.wait_for(instance, want, max(0.0, min(left, 0.5)))
                return
            except ProjectionStalled:
                raise
            except EsActorsError:  # behind (judged by the caller once the time is up) or halted
                if left <= 0.5 or self.runner.states[instance].halted:
                    return

    def _readiness(self, instance: str) -> list[str]:
        """Why ``instance`` could not be current now: behind the log (after a wait, if followed) or halted."""
        heads = self._heads()
        problems = []
        if self._followed(instance):
            self._settle(instance, heads)
            if self.runner.states[instance].halted:
                problems.append(f"{instance!r} is halted: {self.runner.states[instance].last_error}")
        lag = self._lag(instance, heads)
        if lag:
            how = "" if self._followed(instance) or self.runner is None else " and the projector does not follow it"
            problems.append(f"{instance!r} is {lag} events behind the log{how}")
        return problems

    def _declaration(self, instance: str) -> Any:
        if self._followed(instance):
            return self.runner.states[instance].projection
        row = first_row(self.con.cursor().execute("SELECT definition FROM es_actors.builds WHERE instance = ?", [instance]))
        if row and row[0] is not None:
            try:
                return self.load(row[0])
            except Exception:
                return None
        return None

    @contextmanager
    def _held(self, *instances: str) -> Iterator[None]:
        """No batch of these runs meanwhile (the projector's): both are read at the same positions."""
        with contextlib.ExitStack() as stack:
            for i in sorted(set(instances)):
                if self._followed(i):
                    stack.enter_context(self.runner.exclusive(i, timeout_s=self.hold_s))
            yield

    def check(self, projection: str, version: int) -> dict[str, Any]:
        """Compare version ``version`` with the current version (see :mod:`.check`); ``ok`` False
        names what differs in ``problems``."""
        version = _valid_version(version)
        current = self._current(projection)
        return self._check(projection, current, self._resolve(projection, version, current))

    def _check(self, projection: str, current: str, candidate: str) -> dict[str, Any]:
        if candidate == current:
            raise EsActorsError(f"{candidate!r} is already the current version of {projection!r}")
        problems = self._readiness(candidate)
        declared = self._declaration(candidate)
        checks = list(getattr(declared, "cutover_checks", ()) or ())
        for attempt in range(3):  # both at the same positions: under writes, wait for both and try again
            if attempt:
                heads = self._heads()
                self._settle(current, heads)
                self._settle(candidate, heads)
            else:
                self._settle(current, self._heads())  # the candidate waited in _readiness
            with self._held(current, candidate):
                cur = self.con.cursor()
                cur.execute("BEGIN")  # one snapshot of both, and nothing a check does stays: always rolled back
                try:
                    at = {i: dict(cur.execute("SELECT partition, position FROM es_actors.checkpoints WHERE projection = ?",
                                              [i]).fetchall()) for i in (current, candidate)}
                    if at[current] != at[candidate] and attempt < 2 and self.runner is not None:
                        continue
                    tables = compare(cur, current, candidate)
                    assertions = run_checks(cur, current, candidate, checks) if checks else []
                    break
                finally:
                    cur.execute("ROLLBACK")
                    cur.close()
        crash_point("checked")
        if at[current] != at[candidate]:
            problems.append(f"compared at different positions: current {at[current]}, candidate {at[candidate]}")
        differs = [t["table"] for t in tables if t["differs"]]
        problems += [_describe(t) for t in tables if t.get("only_in")]  # a relation only one version has: always
        if checks:  # the declaration says what must hold: differences of rows are expected, reported
            problems += [f"cutover check failed: {a['sql'].strip()[:200]}" + (f" ({a['error']})" if "error" in a else
                         f" ({a['rows']} rows)") for a in assertions if not a["ok"]]
        else:
            problems += [_describe(t) for t in tables if t["differs"] and not t.get("only_in")]
        return {"projection": projection, "current": current, "candidate": candidate, "tables": tables,
                "cutover_checks": assertions, "differs": differs, "problems": problems, "ok": not problems}

    # -- switch, roll back, drop ---------------------------------------------------------------

    def cutover(self, projection: str, version: int, principal: str, reason: str, force: bool = False) -> dict[str, Any]:
        """Check version ``version``, then point ``main`` at it; refused (CutoverRefused) on a
        problem unless ``force`` (recorded)."""
        require_who(principal, reason)
        version = _valid_version(version)
        with self._refusals("cutover", projection, principal, reason, force) as started, self._one_at_a_time(projection):
            current = self._current(projection)
            candidate = self._resolve(projection, version, current)
            if candidate == current:
                raise EsActorsError(f"{candidate!r} is already the current version of {projection!r}")
            op = Operation(self.con, "cutover", projection, current, candidate, principal, reason, force)
            started.append(op)
            crash_point("started")
            try:
                report = self._check(projection, current, candidate)
            except BaseException as exc:
                op.finish("failed", {"error": f"{type(exc).__name__}: {exc}"})
                raise
            return self._switch(op, projection, current, candidate, version, report, force, "cutover")

    def rollback(self, projection: str, principal: str, reason: str, force: bool = False) -> dict[str, Any]:
        """Switch back to the version that was current before the last cutover; refused if it is
        behind the log or halted, unless ``force``. Rolling back a rollback installs the version
        that rollback left: it is checked like a cutover (refused on a difference unless ``force``)."""
        require_who(principal, reason)
        with self._refusals("rollback", projection, principal, reason, force) as started, self._one_at_a_time(projection):
            current = self._current(projection)
            last = oplog.last_switch(self.con.cursor(), projection)
            if last is None or last[1] != current or last[0] is None:
                raise EsActorsError(f"projection {projection!r}: no cutover to {current!r} is recorded to roll back")
            target, undoes = last[0], last[2]
            known = {r["instance"]: r["version"] for r in self._instances(projection)}
            if target not in known:
                raise EsActorsError(f"projection {projection!r}: {target!r}, current before, was dropped; cut over to a version it has")
            op = Operation(self.con, "rollback", projection, current, target, principal, reason, force)
            started.append(op)
            crash_point("started")
            try:
                if undoes == "rollback":  # rolling back a rollback installs the version it left: checked like a cutover
                    report = self._check(projection, current, target)
                else:  # undoing a cutover: back to the version that served before, if it is complete
                    problems = self._readiness(target)
                    report = {"projection": projection, "current": current, "candidate": target, "problems": problems,
                              "ok": not problems}
            except BaseException as exc:
                op.finish("failed", {"error": f"{type(exc).__name__}: {exc}"})
                raise
            crash_point("checked")
            return self._switch(op, projection, current, target, known[target], report, force, "rollback")

    def _switch(
        self, op: Operation, projection: str, current: str, to: str, version: int, report: dict[str, Any], force: bool,
        what: str,
    ) -> dict[str, Any]:
        detail = {"problems": report["problems"], "differs": report.get("differs", [])}
        if not report["ok"] and not force:
            op.finish("refused", detail)
            raise CutoverRefused(
                f"{what} of {projection!r} from {current!r} to {to!r} refused: " + "; ".join(report["problems"])
                + ". If that is expected, force it (--force; recorded)"
            )
        cur = self.con.cursor()
        try:
            with transaction(cur):
                switch_views(cur, projection, current, to, version)
                op.finish_in(cur, "done", detail)
                crash_point("switch")
        except BaseException as exc:
            op.finish("failed", {**detail, "error": f"{type(exc).__name__}: {exc}"})
            raise
        finally:
            cur.close()
        crash_point("committed")
        return {**report, "operation": op.id, "forced": force and not report["ok"], "current": to, "previous": current}

    def drop(self, projection: str, version: int, principal: str, reason: str) -> dict[str, Any]:
        """Remove a version that is not current: its schema, checkpoints, dead letters and build record."""
        require_who(principal, reason)
        version = _valid_version(version)
        with self._refusals("drop", projection, principal, reason, False) as started, self._one_at_a_time(projection):
            current = self._current(projection)
            instance = self._resolve(projection, version, current)
            if instance == current:
                raise EsActorsError(f"{instance!r} is the current version of {projection!r}: cut over to another before dropping it")
            running = self.runner.states[instance].projection if self._followed(instance) else None
            declared = getattr(running, "declared_as", None) or (  # the code's own, or the build it runs as (ADR-018)
                instance if running is not None and getattr(running, "beside_of", None) is None else None)
            if declared is not None:
                raise EsActorsError(f"{instance!r} is declared by the code the projector runs (version {version} of "
                                    f"{declared!r}): deploy code at another version (or without it) first")
            op = Operation(self.con, "drop", projection, instance, None, principal, reason, False)
            started.append(op)
            crash_point("started")
            if running is not None:
                self.runner.remove_projection(instance)  # it stops following before its tables go
            cur = self.con.cursor()
            try:
                with transaction(cur):
                    drop_in_transaction(cur, instance)
                    op.finish_in(cur, "done", {"version": version})
                    crash_point("switch")
            except BaseException as exc:
                if running is not None:
                    self.runner.add_projection(running)
                op.finish("failed", {"error": f"{type(exc).__name__}: {exc}"})
                raise
            finally:
                cur.close()
            crash_point("committed")
            return {"projection": projection, "dropped": instance, "version": version, "operation": op.id}


def _describe(t: dict[str, Any]) -> str:
    what = [t["shape"]] if t.get("shape") else []
    if t.get("only_in"):
        return f"{t.get('kind', 'table')} {t['table']}: {t['shape']}"
    for k, label in (("only_in_current", "only in the current"), ("only_in_candidate", "only in the candidate"),
                     ("changed", "changed")):
        if t.get(k):
            what.append(f"{t[k]} rows {label}")
    return f"{t.get('kind', 'table')} {t['table']}: " + ", ".join(what)


def in_process(layout: StoreLayout, partitions: int, operation: str, *args: Any, **kwargs: Any) -> Any:
    """Run a :class:`Versions` operation on the read-model file here (no projector may hold it)."""
    path = readmodel_path(layout.read_model_root)
    if not path.exists():
        raise EsActorsError(f"{layout.uri} has no read model yet here (no projection has run; read models: {path.parent})")
    try:
        con = connect_restricted(str(path), layout.read_model_root)
    except duckdb.Error as exc:
        raise open_error(path, exc) from None
    try:
        for stmt in SYSTEM_DDL:
            con.execute(stmt)
        return getattr(Versions(con, layout, partitions), operation)(*args, **kwargs)
    finally:
        con.close()
