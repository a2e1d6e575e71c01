"""Combining a backfill's parts into the read-model file: the projection's version built beside
the live one, as its own schema ``<name>__v<version>`` with its own checkpoints (each partition's
target) and dead letters, in ONE transaction. A crash before the commit leaves nothing of it; after,
the version follows the log like any projection (the projector adopts it).

The live version is not touched: its schema, its views in ``main`` and its checkpoints stay.
The built version is queried by its schema (``SELECT * FROM balances__v2.balances``); switching
the views in ``main`` to it is the cutover's work.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import duckdb

from es_actors.errors import EsActorsError
from es_actors.read.backfill.files import DEAD_LETTERS, TaskCheckpoint
from es_actors.read.backfill.plan import BackfillPlan
from es_actors.read.backfill.task import projection_tables
from es_actors.read.backfill.work import BackfillWork
from es_actors.read.projection import _NAME, Projection
from es_actors.read.readmodel.checkpoints import set_checkpoint
from es_actors.read.readmodel.database import sql_str, transaction
from es_actors.read.readmodel.schemas import drop_in_transaction


@dataclass
class InstallReport:
    instance: str
    rows: dict[str, int]
    dead_letters: int
    merge_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def instance_name(name: str, version: int) -> str:
    """The schema (and checkpoint key) of a projection version built beside the live one."""
    return f"{name}__v{version}"


def beside(p: type[Projection]) -> type[Projection]:
    """The projection as the version built beside: the same declaration under its instance name."""
    name = instance_name(p.name, p.version)
    if not _NAME.match(name):
        raise EsActorsError(f"projection {p.name!r} v{p.version}: {name!r} is too long for a schema name (63 characters)")
    return type(p.__name__, (p,), {"name": name, "__module__": p.__module__, "__qualname__": p.__qualname__, "beside_of": p.name})


def taken_by_a_projection(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether ``name`` is registered as a projection of its own, not as a backfill's build (also
    on a read-only connection to a read model written before builds existed)."""
    has_builds = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'es_actors' AND table_name = 'builds'"
    ).fetchone()[0]  # type: ignore[index]
    row = con.execute(
        "SELECT count(*) FROM es_actors.projections WHERE name = ?"
        + (" AND name NOT IN (SELECT instance FROM es_actors.builds)" if has_builds else ""), [name],
    ).fetchone()
    return bool(row and row[0])


def install(
    con: duckdb.DuckDBPyConnection,
    p: type[Projection],
    plan: BackfillPlan,
    parts: Sequence[TaskCheckpoint],
    work: BackfillWork,
    definition: bytes | None,
) -> InstallReport:
    """Build ``<name>__v<version>`` from the tasks' final parts (in task order), with its
    checkpoints at the plan's targets, replacing an earlier build of the same version."""
    t0 = time.perf_counter()
    name = instance_name(p.name, p.version)
    cur = con.cursor()  # every statement on its own cursor: the read model's connection serves other threads
    try:
        if taken_by_a_projection(cur, name):
            raise EsActorsError(f"a projection named {name!r} exists and is not a backfill's build: rename it or the projection")
        with transaction(cur):
            drop_in_transaction(cur, name)
            cur.execute(f'CREATE SCHEMA "{name}"')
            cur.execute(f"SET search_path = '{name}'")
            for stmt in p.setup_statements():
                cur.execute(stmt)
            cur.execute("INSERT INTO es_actors.projections VALUES (?, ?, ?, false, now())", [name, p.version, p.kind])
            rows, dead = _combine(cur, p, name, plan, parts, work)
            cur.execute(
                "INSERT INTO es_actors.builds VALUES (?, ?, ?, ?, ?, now())",
                [name, p.name, p.version, definition, work.name],
            )
    finally:
        cur.close()
    return InstallReport(name, rows, dead, time.perf_counter() - t0)


def install_into(
    con: duckdb.DuckDBPyConnection, p: type[Projection], plan: BackfillPlan, parts: Sequence[TaskCheckpoint], work: BackfillWork
) -> InstallReport:
    """A parallel catch-up: fold the parts into the projection's own tables (its rows up to the
    plan's start stay; a combining merge adds to them), its checkpoints to the targets, in one
    transaction. The caller holds the projection (no batch of it runs meanwhile)."""
    t0 = time.perf_counter()
    cur = con.cursor()  # every statement on its own cursor: the read model's connection serves other threads
    try:
        have = {int(part): int(pos) for part, pos in cur.execute(
            "SELECT partition, position FROM es_actors.checkpoints WHERE projection = ?", [p.name]).fetchall()}
        moved = {i: (have.get(i, 0), start) for i, start in plan.start.items() if have.get(i, 0) != start}
        if moved:
            raise EsActorsError(f"catch-up of {p.name}: its checkpoints moved since the plan (partition: (now, planned)) {moved}")
        with transaction(cur):
            cur.execute(f"SET search_path = '{p.name}'")
            rows, dead = _combine(cur, p, p.name, plan, parts, work)
    finally:
        cur.close()
    return InstallReport(p.name, rows, dead, time.perf_counter() - t0)


def _combine(
    cur: duckdb.DuckDBPyConnection, p: type[Projection], name: str, plan: BackfillPlan, parts: Sequence[TaskCheckpoint],
    work: BackfillWork,
) -> tuple[dict[str, int], int]:
    """Tables, dead letters and checkpoints of ``name`` from the parts (inside the caller's transaction)."""
    rows = _merge_tables(cur, p, name, parts, work)
    dead = _merge_dead_letters(cur, name, parts, work)
    for part, pos in plan.targets.items():
        if pos > plan.start.get(part, 0) or name != p.name:
            set_checkpoint(cur, name, part, pos)
    return rows, dead


def _merge_tables(
    cur: duckdb.DuckDBPyConnection, p: type[Projection], name: str, parts: Sequence[TaskCheckpoint], work: BackfillWork
) -> dict[str, int]:
    tables = projection_tables(cur, name)
    merge_sql = dict(p.merge.tables) if p.merge is not None else {}
    rows: dict[str, int] = {}
    for t in tables:
        files = [str(work.table_file(ck, t)) for ck in parts if t in ck.tables]
        if not files:
            rows[t] = 0
            continue
        sql = merge_sql.get(t)
        try:
            if sql is None:
                cur.execute(f'INSERT INTO "{name}"."{t}" BY NAME SELECT * FROM read_parquet([{", ".join(sql_str(f) for f in files)}])')
            else:
                for f in files:  # in task order: a part's rows fold into what the earlier parts built
                    cur.execute(f"CREATE OR REPLACE TEMP VIEW part AS SELECT * FROM read_parquet({sql_str(f)})")
                    cur.execute(sql)
        except duckdb.ConstraintException as exc:
            how = "its merge SQL" if sql else "inserting each part's rows (no merge SQL for it)"
            raise EsActorsError(
                f"backfill of {p.name} v{p.version}: combining the parts of table {t!r} by {how} failed: {exc}. "
                "Parts built from different shares of the log collide on a key: declare merge SQL for the table "
                "(Merge.combining) or, for rows that are not keyed by aggregate, no merge (sequential replay)"
            ) from None
        except duckdb.Error as exc:
            raise EsActorsError(f"backfill of {p.name} v{p.version}: combining the parts of table {t!r} failed: {type(exc).__name__}: {exc}") from None
        rows[t] = int(cur.execute(f'SELECT count(*) FROM "{name}"."{t}"').fetchone()[0])  # type: ignore[index]
    cur.execute("DROP VIEW IF EXISTS part")
    return rows


def _merge_dead_letters(cur: duckdb.DuckDBPyConnection, name: str, parts: Sequence[TaskCheckpoint], work: BackfillWork) -> int:
    files = [str(work.table_file(ck, DEAD_LETTERS)) for ck in parts if ck.parked]
    if not files:
        return 0
    cur.execute(
        f"INSERT INTO es_actors.dead_letters BY NAME SELECT * REPLACE ({sql_str(name)} AS projection) "
        f"FROM read_parquet([{', '.join(sql_str(f) for f in files)}])"
    )
    return int(cur.execute("SELECT count(*) FROM es_actors.dead_letters WHERE projection = ?", [name]).fetchone()[0])  # type: ignore[index]


def builds(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int, bytes | None]]:
    """The versions built beside live ones: (instance, projection, version, pickled declaration)."""
    return [tuple(r) for r in con.execute("SELECT instance, projection, version, definition FROM es_actors.builds ORDER BY 1").fetchall()]  # type: ignore[misc]


def adopt(runner: Any, p: type[Projection], work: BackfillWork, definition: bytes | None) -> InstallReport:
    """Install a finished backfill into a running projection runner's read model and let the
    runner follow the built version from its targets (an earlier build of it is replaced)."""
    plan = work.load_plan()
    if plan is None:
        raise EsActorsError(f"no backfill plan in {work.where}")
    parts = [work.load_checkpoint(t.id) for t in plan.tasks]
    missing = [t.id for t, ck in zip(plan.tasks, parts) if ck is None or not ck.final]
    if missing:
        raise EsActorsError(f"backfill of {p.name} v{p.version}: tasks {missing} have not finished; run the backfill again to finish them")
    inst = beside(p)
    previous = runner.states.get(inst.name)
    runner.remove_projection(inst.name)  # an earlier build of this version stops while it is replaced...
    try:
        report = install(runner.read_model.con, p, plan, [ck for ck in parts if ck is not None], work, definition)
    except BaseException:
        if previous is not None:  # ...and, the install rolled back, follows on as it was
            runner.add_projection(previous.projection)
        raise
    finally:
        work.drop_local_copies()
    runner.add_projection(inst)
    return report


def adopt_builds(runner: Any, load: Any, log: Any) -> None:
    """At a projector's start: follow every version built beside whose declaration loads
    (``load(definition) -> Projection class``); one that does not is left, with a warning."""
    for instance, name, version, definition in builds(runner.read_model.con):
        if instance in runner.states or definition is None:
            continue
        try:
            p = load(definition)
            runner.add_projection(beside(p))
        except Exception as exc:
            log.warning("projection %s v%s built beside (%s) is not followed: its declaration does not load here: %s: %s",
                        name, version, instance, type(exc).__name__, exc)
