"""The read-only query API cannot write, run other SQL, touch files or settings, run unbounded,
or return an unbounded result; it takes bound parameters (ADR-010).

Real parts: a real local Ray with the store's projector for the projector path, a read-only
store (no projector) for the in-process path, real DuckDB files. What must hold on both paths:
every escape is refused before it runs and changes nothing (read-model rows and checkpoints
stay as they were, and the projection keeps applying events); a slow query returns within its
timeout plus a small margin and the projector keeps serving; legitimate queries still work.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors import Store
from es_actors.errors import EsActorsError, QueryFailed, QueryRefused, QueryTimeout, QueryTooLarge
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from es_actors.examples.bank_projections import Balances

# -- the classification of DuckDB's functions (no Ray) ------------------------------------------


def test_every_duckdb_function_is_classified():
    """Raising the DuckDB pin fails here until every new function is classified (allowed or denied)."""
    from es_actors.read import query_functions as qf

    assert duckdb.__version__ == qf.DUCKDB_VERSION, "classify the functions of this DuckDB version first"
    pin = [line for line in (Path(__file__).parents[1] / "pyproject.toml").read_text().splitlines() if line.strip().startswith('"duckdb')]
    assert len(pin) == 1 and f'"duckdb=={qf.DUCKDB_VERSION}"' in pin[0], f"pyproject.toml must pin duckdb exactly: {pin}"
    assert not qf.ALLOWED & qf.DENIED
    rows = set(duckdb.connect().execute("SELECT DISTINCT function_name, function_type FROM duckdb_functions()").fetchall())
    unclassified = sorted(rows - qf.ALLOWED - qf.DENIED)
    assert not unclassified, f"classify these in es_actors/read/query_functions.py: {unclassified}"
    stale = sorted((qf.ALLOWED | qf.DENIED) - rows - {(n, t) for n, t in qf.ALLOWED if t == "binder"})
    assert not stale, f"no longer in DuckDB, remove from es_actors/read/query_functions.py: {stale}"
    must_deny = {
        ("json_execute_serialized_sql", "table"), ("query", "table"), ("query_table", "table"),
        ("read_csv", "table"), ("read_text", "table"), ("read_blob", "table"), ("read_parquet", "table"),
        ("glob", "table"), ("duckdb_settings", "table"), ("duckdb_secrets", "table"), ("checkpoint", "table"),
        ("current_setting", "scalar"), ("nextval", "scalar"), ("setseed", "scalar"), ("sleep_ms", "scalar"),
        ("write_log", "scalar"), ("json_serialize_plan", "scalar"), ("pg_sleep", "macro"),
    }
    assert must_deny <= qf.DENIED


def test_allowed_builtin_macros_expand_to_allowed_functions():
    """A built-in macro is allowed only if its body calls allowed functions: the guard sees the
    macro's name, DuckDB runs its body."""
    from es_actors.read import query_functions as qf
    from es_actors.read.query_guard import walk

    con = duckdb.connect()
    macros = con.execute(
        "SELECT DISTINCT function_name, function_type, macro_definition FROM duckdb_functions() "
        "WHERE function_type IN ('macro', 'table_macro')"
    ).fetchall()
    checked = 0
    for name, kind, body in macros:
        if (name, kind) not in qf.ALLOWED:
            continue
        sql = f"SELECT {body}" if kind == "macro" else body
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
        assert not tree["error"], (name, tree)
        walk(tree["statements"])  # raises QueryRefused naming the function if it is not allowed
        checked += 1
    assert checked > 50


def test_a_macro_created_in_the_database_is_refused():
    """A macro in the database shadows the built-in of the same name: calling it is refused."""
    from es_actors.read.query_guard import check_query

    con = duckdb.connect()
    check_query(con, "SELECT abs(-1)")
    con.execute("CREATE MACRO abs(x) AS 42")
    with pytest.raises(QueryRefused, match="'abs'"):
        check_query(con, "SELECT abs(-1)")
    with pytest.raises(QueryRefused, match="'abs'"):
        check_query(con, "SELECT * FROM (SELECT abs(-1))")


# -- escapes -----------------------------------------------------------------------------------

import json  # noqa: E402  (used above inside a test too)

#: Expressions that would run SQL, touch files, settings or state, or block, if called.
BAD_EXPRESSIONS = [
    "json_serialize_plan('SELECT 1')",
    "current_setting('threads')",
    "getvariable('x')",
    "nextval('s')",
    "setseed(0.5)",
    "write_log('x')",
    "sleep_ms(100000)",
    "pg_sleep(100)",
    "get_block_size('readmodels')",
    "system.main.current_setting('threads')",
    "main.current_setting('threads')",
    "readmodels.main.abs(1)",
    "no_such_function(1)",
]
#: Table functions (FROM) that would do the same.
BAD_TABLES = [
    "json_execute_serialized_sql(json_serialize_sql('WITH d AS (DELETE FROM es_actors.checkpoints RETURNING *) SELECT count(*) FROM d'))",
    "query('SELECT 1')",
    "query_table('balances')",
    "read_csv('/etc/passwd')",
    "read_text('store.json')",
    "read_blob('readmodels/readmodels.duckdb')",
    "glob('*')",
    "read_parquet('x.parquet')",
    "parquet_metadata('x.parquet')",
    "duckdb_settings()",
    "duckdb_secrets()",
    "checkpoint()",
    "force_checkpoint()",
    "enable_profiling()",
    "pragma_version()",
    "histogram('balances', balance)",
    "'store.json'",
    "'readmodels/readmodels.duckdb'",
    # replacement scans hiding a path in the schema or database part of the name
    '"/etc/passwd".csv',
    '"store".json',
    '"readmodels/readmodels".duckdb',
    '"log/p0000/current/x".parquet',
    'x.parquet',
]
#: Where a bad expression can hide: {e} is the expression.
EXPRESSION_PLACES = [
    "SELECT {e}",
    "SELECT * FROM (SELECT {e} AS x) s",
    "WITH c AS (SELECT {e} AS x) SELECT * FROM c",
    "WITH c AS MATERIALIZED (SELECT 1 AS y) SELECT (SELECT {e}) FROM c",
    "SELECT * FROM range(1) r, LATERAL (SELECT {e} AS x) l",
    "SELECT 1 UNION ALL SELECT {e}",
    "SELECT 1 EXCEPT (SELECT 2 INTERSECT SELECT {e})",
    "SELECT 1 WHERE 1 IN (SELECT {e})",
    "SELECT list_transform([1], x -> {e})",
    "SELECT CASE WHEN false THEN {e} END",
    "SELECT row_number() OVER (ORDER BY {e})",
    "SELECT count(*) FILTER (WHERE {e} IS NULL) FROM range(1)",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 2 AND {e} IS NULL) SELECT * FROM r",
    "SELECT * FROM range(1) WHERE EXISTS (SELECT * FROM (SELECT {e}) s)",
]
#: Where a bad table function can hide: {t} is the FROM item.
TABLE_PLACES = [
    "SELECT * FROM {t}",
    "SELECT * FROM (SELECT * FROM {t}) s",
    "WITH c AS (SELECT * FROM {t}) SELECT * FROM c",
    "SELECT (SELECT count(*) FROM {t})",
    "SELECT * FROM range(1) r, LATERAL (SELECT * FROM {t}) l",
    "SELECT 1 UNION ALL SELECT count(*) FROM {t}",
    "SELECT 1 WHERE EXISTS (SELECT * FROM {t})",
    "SELECT * FROM range(1) a JOIN {t} ON true",
]
#: Data-modifying CTEs, also nested: refused before they run.
WRITING_CTES = [
    "WITH d AS (DELETE FROM es_actors.checkpoints RETURNING *) SELECT count(*) FROM d",
    "WITH u AS (UPDATE balances.balances SET balance = balance + 1000000 RETURNING *) SELECT * FROM u",
    "WITH i AS (INSERT INTO es_actors.checkpoints VALUES ('balances', 99, 1, NULL, now()) RETURNING *) SELECT * FROM i",
    "SELECT * FROM (WITH d AS (DELETE FROM balances.balances RETURNING *) SELECT * FROM d) s",
    "SELECT (WITH d AS (DELETE FROM balances.balances RETURNING *) SELECT count(*) FROM d)",
    "SELECT 1 UNION ALL (WITH d AS (DELETE FROM es_actors.checkpoints RETURNING *) SELECT count(*) FROM d)",
]
OTHER_REFUSED = [
    "CREATE MACRO m(x) AS x",
    "CREATE TEMP MACRO m(x) AS x",
    "PIVOT balances ON owner USING sum(balance)",
    "EXPLAIN ANALYZE SELECT 1",
    "SELECT 1; SELECT 2",
]

ESCAPES = (
    [p.format(e=e) for e in BAD_EXPRESSIONS for p in EXPRESSION_PLACES]
    + [p.format(t=t) for t in BAD_TABLES for p in TABLE_PLACES]
    + WRITING_CTES
    + OTHER_REFUSED
)

#: Queries a user relies on: they must keep working.
LEGITIMATE = [
    "SELECT b.account, b.balance, count(e.position) AS n FROM balances b JOIN events e ON e.aggregate_id = b.account "
    "GROUP BY ALL ORDER BY ALL",
    "SELECT aggregate_id, sum(CASE event_type WHEN 'MoneyDeposited' THEN (payload->>'amount')::BIGINT ELSE 0 END) "
    "OVER (PARTITION BY aggregate_id ORDER BY version) AS running FROM events ORDER BY ALL",
    "SELECT json_extract(payload, '$.amount')::BIGINT AS amount, strftime(recorded_at, '%Y-%m-%d') AS day, "
    "date_trunc('hour', recorded_at) AS hour FROM events WHERE event_type = 'MoneyDeposited'",
    "WITH t AS (SELECT account, balance FROM balances) SELECT max(balance), median(balance), list(account ORDER BY account) FROM t",
    "SELECT * FROM balances WHERE balance > (SELECT avg(balance) FROM balances)",
    "SELECT account, row_number() OVER (ORDER BY balance DESC) AS rank FROM balances QUALIFY rank <= 2",
    "SELECT projection, partition, position FROM es_actors.checkpoints ORDER BY ALL",
    "SELECT table_name FROM duckdb_tables() ORDER BY ALL",
    "SELECT * FROM range(3) r(i), unnest([1, 2]) u(x)",
    "DESCRIBE balances",
    "SUMMARIZE balances",
    "SHOW TABLES",
    "FROM balances SELECT account ORDER BY account LIMIT 1",
    "SELECT account FROM balances UNION SELECT aggregate_id FROM events ORDER BY 1",
]


def _snapshot(store: Store) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (
        store.query("SELECT account, owner, balance, events, version FROM balances ORDER BY account").to_pylist(),
        store.query("SELECT projection, partition, position FROM es_actors.checkpoints ORDER BY ALL").to_pylist(),
    )


@pytest.fixture
def bank(store_factory):
    """A store with the Balances projection caught up on a few accounts."""
    store = store_factory("bank", partitions=2, projections=[Balances], query_timeout_s=20.0)
    results = [store.aggregate(BankAccount, f"a-{i}").submit(OpenAccount(owner=f"o{i}")) for i in range(4)]
    results += [store.aggregate(BankAccount, f"a-{i}").submit(Deposit(amount=10 * (i + 1))) for i in range(4)]
    for r in results:
        store.wait_for("balances", r, timeout=30)
    return store


def _assert_all_refused(store: Store, queries: list[str]) -> None:
    not_refused = []
    for sql in queries:
        try:
            store.query(sql)
        except QueryRefused:
            continue
        except EsActorsError as exc:
            not_refused.append((sql, f"{type(exc).__name__}: {exc}"))
        else:
            not_refused.append((sql, "ran"))
    assert not not_refused, f"{len(not_refused)} not refused, e.g. {not_refused[:5]}"


def test_escapes_are_refused_on_both_paths_and_change_nothing(bank):
    store = bank
    before = _snapshot(store)
    assert before[0] and before[1]
    # the escape from the issue, by itself: refused, naming the function
    with pytest.raises(QueryRefused, match="json_execute_serialized_sql"):
        store.query(f"SELECT * FROM {BAD_TABLES[0]}")
    with pytest.raises(QueryRefused, match="data-modifying CTE"):
        store.query(WRITING_CTES[1])
    _assert_all_refused(store, ESCAPES)  # through the projector actor
    assert _snapshot(store) == before
    for sql in LEGITIMATE:
        store.query(sql)
    # the projection still applies events on top of the intact rows
    r = store.aggregate(BankAccount, "a-0").submit(Deposit(amount=5))
    store.wait_for("balances", r, timeout=30)
    rows, cps = _snapshot(store)
    assert rows[0]["balance"] == before[0][0]["balance"] + 5
    after = _snapshot(store)
    store.close()
    # in this process (no projector): the same refusals, the file unchanged
    ro = Store.open(store.root, [BankAccount], read_only=True)
    assert ro._find_projector() is None
    _assert_all_refused(ro, ESCAPES)
    for sql in LEGITIMATE:
        ro.query(sql)
    assert _snapshot(ro) == after


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bad=st.one_of(
        st.sampled_from(BAD_EXPRESSIONS).map(lambda e: ("e", e)), st.sampled_from(BAD_TABLES).map(lambda t: ("t", t))
    ),
    wrappers=st.lists(
        st.sampled_from([
            "SELECT * FROM ({q}) s",
            "WITH c AS ({q}) SELECT * FROM c",
            "SELECT (SELECT count(*) FROM ({q}) s)",
            "SELECT * FROM range(1) r, LATERAL ({q}) l",
            "SELECT 1 AS x UNION ALL SELECT count(*) FROM ({q}) s",
            "SELECT 1 WHERE EXISTS ({q})",
            "SELECT * FROM range(1) WHERE 1 IN (SELECT count(*) FROM ({q}) s)",
        ]),
        max_size=4,
    ),
)
def test_escapes_nested_anywhere_are_refused(bad, wrappers):
    """However deep a bad call is nested, the guard finds it (DuckDB parse tree, no Ray)."""
    from es_actors.read.query_guard import check_query

    kind, item = bad
    q = f"SELECT {item} AS x" if kind == "e" else f"SELECT * FROM {item}"
    for w in wrappers:
        q = w.format(q=q)
    with pytest.raises(QueryRefused):
        check_query(duckdb.connect(), q)


# -- timeout, cap, parameters -----------------------------------------------------------------

SLOW = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range = -1"


def test_query_arguments_are_validated_on_both_paths(bank):
    """No query runs unbounded: a timeout is seconds > 0 (None: the configured default)."""
    store = bank
    for q in (store, None):
        if q is None:
            store.close()
            q = Store.open(store.root, [BankAccount], read_only=True)
        for timeout in (0, -1, 0.0, math.inf, math.nan, "5", True):
            with pytest.raises(QueryRefused, match="timeout"):
                q.query("SELECT 1", timeout=timeout)
        for params in ("a-1", 5, {1: "x"}):
            with pytest.raises(QueryRefused, match="params"):
                q.query("SELECT ?", params)
        assert q.query("SELECT 1 AS x", timeout=0.5).to_pylist() == [{"x": 1}]


def test_slow_queries_end_at_their_timeout_and_the_projector_keeps_serving(store_factory):
    store = store_factory("slow", partitions=2, projections=[Balances], query_timeout_s=1.5)
    r = store.aggregate(BankAccount, "s-1").submit(OpenAccount(owner="s"))
    store.wait_for("balances", r, timeout=30)
    for timeout, limit in ((1.0, 1.0), (None, 1.5)):  # None: the configured default
        t0 = time.monotonic()
        with pytest.raises(QueryTimeout, match="cancelled"):
            store.query(SLOW, timeout=timeout)
        took = time.monotonic() - t0
        assert limit <= took + 0.05 and took < limit + 1.5, f"timeout={timeout}: returned after {took:.2f} s"
    # the projector still answers and projects
    r = store.aggregate(BankAccount, "s-1").submit(Deposit(amount=3))
    store.wait_for("balances", r, timeout=30)
    assert store.query("SELECT balance FROM balances WHERE account = 's-1'").to_pylist() == [{"balance": 3}]
    store.close()
    # in this process, the same
    ro = Store.open(store.root, [BankAccount], read_only=True, query_timeout_s=1.5)
    for timeout, limit in ((1.0, 1.0), (None, 1.5)):
        t0 = time.monotonic()
        with pytest.raises(QueryTimeout):
            ro.query(SLOW, timeout=timeout)
        took = time.monotonic() - t0
        assert limit <= took + 0.05 and took < limit + 1.5, f"in process, timeout={timeout}: {took:.2f} s"


def test_results_are_capped(store_factory):
    store = store_factory("cap", partitions=2, projections=[Balances], query_max_rows=1000, query_max_bytes=100_000)
    assert store.query("SELECT * FROM range(1000)").num_rows == 1000
    with pytest.raises(QueryTooLarge, match="query_max_rows = 1000"):
        store.query("SELECT * FROM range(1001)")
    with pytest.raises(QueryTooLarge, match="query_max_bytes = 100000"):
        store.query("SELECT repeat('x', 1000) AS s FROM range(500)")
    store.close()
    ro = Store.open(store.root, [BankAccount], read_only=True, query_max_rows=10)
    with pytest.raises(QueryTooLarge, match="query_max_rows = 10"):
        ro.query("SELECT * FROM range(11)")
    assert ro.query("SELECT * FROM range(10)").num_rows == 10


def test_bound_parameters_on_both_paths(bank):
    store = bank
    before = _snapshot(store)
    for q in (store, None):
        if q is None:
            store.close()
            q = Store.open(store.root, [BankAccount], read_only=True)
        assert q.query("SELECT balance FROM balances WHERE account = ?", ["a-1"]).to_pylist() == [{"balance": 20}]
        assert q.query("SELECT balance FROM balances WHERE account = $1", ("a-2",)).to_pylist() == [{"balance": 30}]
        assert q.query(
            "SELECT count(*) AS n FROM events WHERE aggregate_id = $acc AND version >= $v", {"acc": "a-3", "v": 1}
        ).to_pylist() == [{"n": 2}]
        # a parameter is a value, never SQL
        for evil in ("a-1' OR '1'='1", "'; DELETE FROM balances.balances; --", "a-1'); DROP TABLE balances.balances; --"):
            assert q.query("SELECT * FROM balances WHERE account = ?", [evil]).num_rows == 0
            assert q.query("SELECT ? AS v", [evil]).to_pylist() == [{"v": evil}]
        with pytest.raises(QueryFailed):
            q.query("SELECT ?, ?", ["only one"])
        assert _snapshot(q) == before


def test_cli_query_binds_params(bank):
    from click.testing import CliRunner

    from es_actors.cli import main

    bank.close()
    run = CliRunner().invoke
    sql = "SELECT account, balance FROM balances WHERE account = ? AND balance >= ?"
    out = run(main, ["query", sql, "--store", str(bank.root), "--json", "-p", "a-1", "-p", "20"])
    assert out.exit_code == 0, out.output
    assert [json.loads(line) for line in out.output.splitlines()] == [{"account": "a-1", "balance": 20}]
    out = run(main, ["query", "SELECT $acc AS a, $n AS n", "--store", str(bank.root), "--json", "-p", "acc=a-1", "-p", "n=3"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"a": "a-1", "n": 3}
    out = run(main, ["query", "SELECT * FROM read_csv('/etc/passwd')", "--store", str(bank.root)])
    assert out.exit_code != 0 and "QueryRefused" in out.output


def test_hostile_texts_fail_as_es_actors_errors_without_running(bank):
    """A lone surrogate, a text too long to parse within a timeout (DuckDB's parser cannot be
    interrupted), and an error that only shows while results stream: each an es_actors error."""
    from es_actors import QueryFailed

    store = bank
    with pytest.raises(QueryRefused, match="surrogate"):
        store.query("SELECT '\ud800'")
    chain = "WITH " + ", ".join(f"c{i} AS (SELECT {i})" for i in range(20_000)) + " SELECT 1"
    with pytest.raises(QueryRefused, match="query_max_sql_bytes"):
        store.query(chain)
    with pytest.raises(QueryFailed, match="boom"):  # raised after the first streamed batch
        store.query("SELECT CASE WHEN range > 100000 THEN error('boom') END FROM range(200000)")
