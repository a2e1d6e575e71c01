"""The Ray-free parts of projection versions (ADR-018) on a real DuckDB database: the check finds
a difference exactly when the tables differ (keyed and unkeyed, a property), the switch moves the
views in main and the current row together, the operations log shows an operation without an
outcome as interrupted, and neither a new projection nor a drop takes views from a current version."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from es_actors.errors import EsActorsError
from es_actors.read.readmodel.current import current_instance, runs_as
from es_actors.read.readmodel.database import SYSTEM_DDL, transaction
from es_actors.read.readmodel.schemas import _create, drop_in_transaction
from es_actors.read.projection import SqlProjection
from es_actors.read.versions.check import compare, run_checks
from es_actors.read.versions.oplog import Operation, operations, refused
from es_actors.read.versions.switch import switch_views


def database() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    for stmt in SYSTEM_DDL:
        con.execute(stmt)
    return con


def two_versions(con, keyed: bool, a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    pk = " PRIMARY KEY" if keyed else ""
    for schema, rows in (("t", a), ("t__v2", b)):
        con.execute(f"CREATE SCHEMA {schema}")
        con.execute(f"CREATE TABLE {schema}.x (k INTEGER{pk}, v INTEGER)")
        if rows:
            con.executemany(f"INSERT INTO {schema}.x VALUES (?, ?)", rows)


rows_keyed = st.dictionaries(st.integers(0, 6), st.integers(0, 2), max_size=6).map(lambda d: sorted(d.items()))
rows_any = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1)), max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.booleans(), st.data())
def test_the_check_finds_a_difference_exactly_when_the_tables_differ(keyed, data):
    rows = rows_keyed if keyed else rows_any
    a = data.draw(rows)
    b = data.draw(st.one_of(st.just(list(a)), rows))
    con = database()
    two_versions(con, keyed, a, b)
    [t] = compare(con.cursor(), "t", "t__v2")
    assert t["differs"] == (sorted(a) != sorted(b))
    assert t["key"] == (["k"] if keyed else None)
    assert (t["rows_current"], t["rows_candidate"]) == (len(a), len(b))
    if keyed:
        da, db = dict(a), dict(b)
        assert t["only_in_current"] == len(da.keys() - db.keys())
        assert t["only_in_candidate"] == len(db.keys() - da.keys())
        assert t["changed"] == sum(1 for k in da.keys() & db.keys() if da[k] != db[k])
    assert bool(t["sample"]) == t["differs"]


def test_a_changed_shape_is_reported_and_the_common_columns_compared():
    con = database()
    con.execute("CREATE SCHEMA t; CREATE TABLE t.x (k INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t.x VALUES (1, 1)")
    con.execute("CREATE SCHEMA t__v2; CREATE TABLE t__v2.x (k INTEGER PRIMARY KEY, v INTEGER, w VARCHAR); "
                "INSERT INTO t__v2.x VALUES (1, 1, 'new')")
    con.execute("CREATE TABLE t__v2.y (a INTEGER)")
    x, y = compare(con.cursor(), "t", "t__v2")
    assert x["shape"] == "new columns ['w']" and x["changed"] == 0 and x["compared_columns"] == ["k", "v"]
    assert y["shape"] == "table only in the candidate version" and y["differs"]
    checks = run_checks(con.cursor(), "t", "t__v2", ["SELECT * FROM x JOIN {current}.x c USING (k) WHERE x.v <> c.v",
                                                      "SELECT * FROM x WHERE w <> 'new'", "SELECT * FROM nowhere"])
    assert [c["ok"] for c in checks] == [True, True, False] and "error" in checks[2]


class T(SqlProjection):
    name = "t"
    event_types = ("E",)
    setup = "CREATE TABLE x (k INTEGER PRIMARY KEY, v INTEGER)"
    apply = "SELECT 1"


class T2(T):
    version = 2
    setup = "CREATE TABLE x (k INTEGER PRIMARY KEY, v INTEGER); CREATE TABLE y (a INTEGER)"


def views(con) -> dict[str, str]:
    return {v: sql for v, sql in con.execute("SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 'main' "
                                             "AND NOT internal").fetchall()}


def shows(con, view: str) -> str:
    """The schema main.<view> selects from."""
    return views(con)[view].split(" FROM ")[1].split(".")[0].strip('"')


def installed_build(con) -> None:
    """t at v1 with its views (as a projector sets it up), and t__v2 as a backfill's build."""
    cur = con.cursor()
    with transaction(cur):
        _create(cur, T)
    con.execute("CREATE SCHEMA t__v2; CREATE TABLE t__v2.x (k INTEGER PRIMARY KEY, v INTEGER); CREATE TABLE t__v2.y (a INTEGER)")
    con.execute("INSERT INTO es_actors.projections VALUES ('t__v2', 2, 'sql', false, now())")
    con.execute("INSERT INTO es_actors.builds VALUES ('t__v2', 't', 2, NULL, 'x', now())")


def test_switch_moves_views_and_the_current_row_and_a_drop_leaves_the_current_views():
    con = database()
    installed_build(con)
    assert current_instance(con, "t") == "t" and set(views(con)) == {"x"}
    cur = con.cursor()
    with transaction(cur):
        switch_views(cur, "t", "t", "t__v2", 2)
    assert current_instance(con, "t") == "t__v2"
    assert set(views(con)) == {"x", "y"} and shows(con, "x") == "t__v2"
    with pytest.raises(EsActorsError, match="current version of projection 't'"):
        with transaction(cur):
            drop_in_transaction(cur, "t__v2")  # a current build is never dropped (nor replaced by a backfill)
    with transaction(cur):
        drop_in_transaction(cur, "t")  # the old live schema goes; main keeps showing v2
    assert set(views(con)) == {"x", "y"} and shows(con, "x") == "t__v2"
    with transaction(cur):  # code at v1 opens t again: rebuilt, and it does not take main's views
        _create(cur, T)
    assert shows(con, "x") == "t__v2"
    with transaction(cur):
        switch_views(cur, "t", "t__v2", "t", 1)  # back: y had no table in t, its view goes
    assert set(views(con)) == {"x"} and shows(con, "x") == "t"


def test_code_at_the_built_version_runs_on_the_build_after_a_cutover():
    con = database()
    installed_build(con)
    assert runs_as(con, T2) is T2  # before a cutover: as before (rebuilt in place)
    cur = con.cursor()
    with transaction(cur):
        switch_views(cur, "t", "t", "t__v2", 2)
    q = runs_as(con, T2)
    assert q.name == "t__v2" and q.declared_as == "t" and q.beside_of == "t"
    assert runs_as(con, T) is T  # code still at v1 keeps running t


def test_an_operation_without_an_outcome_is_running_while_its_process_lives_else_interrupted():
    con = database()
    a = Operation(con, "cutover", "t", "t", "t__v2", "ops", "new totals", False)
    b = Operation(con, "cutover", "t", "t", "t__v2", "ops", "again", True)
    b.finish("done", {"problems": ["x"]})
    ops = operations(con)
    assert [(o["id"], o["outcome"], o["forced"]) for o in ops] == [(a.id, "running", False), (b.id, "done", True)]
    assert ops[1]["detail"] == {"problems": ["x"]} and ops[0]["principal"] == "ops"
    assert ops[0]["detail"]["pid"] == os.getpid()

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    started = json.loads(con.execute("SELECT detail FROM es_actors.operations WHERE id = ?", [a.id]).fetchone()[0])
    con.execute("UPDATE es_actors.operations SET detail = ? WHERE id = ?",  # as if that process had started it
                [json.dumps({**started, "pid": int(gone.stdout)}), a.id])
    assert operations(con)[0]["outcome"] == "interrupted"  # its process ended without an outcome
    con.execute("UPDATE es_actors.operations SET detail = ? WHERE id = ?", [json.dumps({**started, "host": "elsewhere"}), a.id])
    assert operations(con)[0]["outcome"] == "unknown"  # another host: this process cannot tell


def test_an_operation_refused_before_it_started_is_one_refused_entry():
    con = database()
    refused(con, "rollback", "t", None, None, "ops", "undo", False, "no cutover to 't' is recorded to roll back")
    [op] = operations(con)
    assert (op["operation"], op["outcome"], op["detail"]["problems"]) == (
        "rollback", "refused", ["no cutover to 't' is recorded to roll back"])
