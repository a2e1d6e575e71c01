"""Version operations (ADR-018) on a real DuckDB read-model file, without a projector: a rollback
of a rollback is checked like a cutover; the check compares views too and always reports a
relation only one version has; declared checks may only read and nothing they do stays; bad
versions are refused as input and refusals before the start are logged; a corrupt file is named
as such, not as held by a projector."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import duckdb
import pytest

from es_actors.errors import CutoverRefused, EsActorsError
from es_actors.read.projection import SqlProjection
from es_actors.read.readmodel.checkpoints import committed_status
from es_actors.read.readmodel.database import SYSTEM_DDL, readmodel_path, transaction
from es_actors.read.readmodel.schemas import _create
from es_actors.read.versions import Versions, in_process
from es_actors.storage.layout import StoreLayout

WHO = {"principal": "ops", "reason": "test"}


class T(SqlProjection):
    name = "t"
    version = 1
    event_types = ()
    setup = "CREATE TABLE x (k INTEGER PRIMARY KEY, v INTEGER); CREATE VIEW big AS SELECT k FROM x WHERE v > 1"
    apply_sql = "SELECT 1"


class Checked(T):
    """A version whose declared checks hold (so row differences are expected)."""

    version = 4
    cutover_checks = ("SELECT * FROM x WHERE v < 0",)


class Writing(T):
    version = 5
    cutover_checks = ("DELETE FROM x RETURNING *", "UPDATE {current}.x SET v = -1 WHERE false", "SELECT * FROM nowhere",
                      "SELECT 1 WHERE false")


def build(con: duckdb.DuckDBPyConnection, version: int, rows: list[tuple[int, int]], view: str | None,
          declared: type | None = None) -> None:
    """``t__v<version>`` as a backfill installs it: tables, rows, build record (with its declaration)."""
    s = f"t__v{version}"
    con.execute(f"CREATE SCHEMA {s}; CREATE TABLE {s}.x (k INTEGER PRIMARY KEY, v INTEGER)")
    if view:
        con.execute(f"CREATE VIEW {s}.big AS {view.format(s=s)}")
    if rows:
        con.executemany(f"INSERT INTO {s}.x VALUES (?, ?)", rows)
    con.execute("INSERT INTO es_actors.projections VALUES (?, ?, 'sql', false, now())", [s, version])
    con.execute("INSERT INTO es_actors.builds VALUES (?, 't', ?, ?, 'x', now())",
                [s, version, pickle.dumps(declared) if declared else None])


ROWS = [(1, 1), (2, 2), (3, 3)]


@pytest.fixture
def versions(tmp_path: Path) -> Versions:
    con = duckdb.connect(":memory:")
    for stmt in SYSTEM_DDL:
        con.execute(stmt)
    cur = con.cursor()
    with transaction(cur):
        _create(cur, T)
    con.executemany("INSERT INTO t.x VALUES (?, ?)", ROWS)
    build(con, 2, ROWS, "SELECT k FROM {s}.x WHERE v > 1")  # the same as v1
    build(con, 3, [(1, 1), (2, 20), (3, 3)], "SELECT k FROM {s}.x WHERE v > 1")  # other rows
    return Versions(con, StoreLayout(tmp_path), 0)


def x_rows(v: Versions, schema: str) -> list[tuple[int, int]]:
    return sorted(v.con.execute(f"SELECT * FROM {schema}.x").fetchall())


def test_rolling_back_a_rollback_is_checked_like_a_cutover(versions):
    with pytest.raises(CutoverRefused):
        versions.cutover("t", 3, **WHO)
    versions.cutover("t", 3, force=True, **WHO)  # v3 fails its check: forced, recorded
    assert versions.rollback("t", **WHO)["current"] == "t"  # undoing the cutover: back to v1
    with pytest.raises(CutoverRefused, match="rollback of 't' from 't' to 't__v3' refused: table x: 1 rows changed"):
        versions.rollback("t", **WHO)  # would re-install v3 unchecked
    assert versions.rollback("t", force=True, **WHO)["forced"]
    log = [(o["operation"], o["to_instance"], o["outcome"], o["forced"]) for o in versions.operations()]
    assert log[-2:] == [("rollback", "t__v3", "refused", False), ("rollback", "t__v3", "done", True)]


def test_the_check_compares_views_and_always_reports_a_relation_only_one_version_has(versions):
    build(versions.con, 6, ROWS, "SELECT k FROM {s}.x WHERE v > 2")  # same table, the view shows other rows
    r = versions.check("t", 6)
    assert not r["ok"] and r["differs"] == ["big"]
    big = next(t for t in r["tables"] if t["table"] == "big")
    assert big["kind"] == "view" and (big["rows_current"], big["rows_candidate"], big["only_in_current"]) == (2, 1, 1)
    assert r["problems"] == ["view big: 1 rows only in the current"]

    build(versions.con, 4, [(1, 5)], None, Checked)  # its declared checks hold, and it lacks the view
    r = versions.check("t", 4)
    assert [c["ok"] for c in r["cutover_checks"]] == [True]
    assert r["problems"] == ["view big: view only in the current version"] and not r["ok"]
    with pytest.raises(CutoverRefused, match="view big: view only in the current version"):
        versions.cutover("t", 4, **WHO)


def test_declared_checks_may_only_read_and_nothing_they_do_stays(versions):
    build(versions.con, 5, ROWS, "SELECT k FROM {s}.x WHERE v > 1", Writing)
    r = versions.check("t", 5)
    assert [c["ok"] for c in r["cutover_checks"]] == [False, False, False, True]  # a failing one does not abort the rest
    assert "CatalogException" in r["cutover_checks"][2]["error"]
    assert "may only read (one SELECT), this is a DELETE statement" in r["cutover_checks"][0]["error"]
    assert "UPDATE statement" in r["cutover_checks"][1]["error"]
    assert not r["ok"] and x_rows(versions, "t__v5") == ROWS == x_rows(versions, "t")
    with pytest.raises(CutoverRefused, match="cutover check failed: DELETE FROM x RETURNING"):
        versions.cutover("t", 5, **WHO)
    assert x_rows(versions, "t__v5") == ROWS


def test_a_bad_version_is_refused_as_input_and_refusals_before_the_start_are_logged(versions):
    for call in (lambda: versions.check("t", -1), lambda: versions.cutover("t", -1, **WHO),
                 lambda: versions.drop("t", 0, **WHO)):
        with pytest.raises(EsActorsError, match="a projection version is a whole number from 1, not -1|not 0") as e:
            call()
        assert "backfill" not in str(e.value)
    assert versions.operations() == []  # bad input: nothing was attempted
    with pytest.raises(EsActorsError, match="has no version 9"):
        versions.cutover("t", 9, **WHO)
    with pytest.raises(EsActorsError, match="no cutover to 't' is recorded"):
        versions.rollback("t", **WHO)
    log = [(o["operation"], o["outcome"], o["detail"]["problems"][0][:30]) for o in versions.operations()]
    assert log == [("cutover", "refused", "projection 't' has no version "), ("rollback", "refused", "projection 't': no cutover to ")]


def test_a_corrupt_read_model_file_is_named_corrupt_not_held(tmp_path):
    path = readmodel_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(EsActorsError, match="is not a DuckDB database file \\(corrupt\\?\\)") as e:
        in_process(StoreLayout(tmp_path), 1, "versions")
    assert str(path) in str(e.value) and "held by" not in str(e.value)


def test_status_of_a_closed_store_names_a_corrupt_read_model_file_corrupt(tmp_path):
    path = readmodel_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(EsActorsError, match="is not a DuckDB database file \\(corrupt\\?\\)"):
        committed_status(StoreLayout(tmp_path), 1)
