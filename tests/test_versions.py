"""Versions of a projection (issue 14, ADR-018): a version built beside is checked against the
current one, cut over to (refused on an unexpected difference unless forced), rolled back and
dropped, on the projector and in process, with every step in the operations log; code moved on to
the new version runs on the build; a process killed at each step of cutover and rollback leaves
exactly one current, complete version and a log that says what happened."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from es_actors import CutoverRefused, EsActorsError, Store
from es_actors.cli import main
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount, Withdraw
from es_actors.examples.bank_projections import Balances
from es_actors.jobs.backfill import backfill
from es_actors.read.versions import CRASH_STEPS
from es_actors.read.versions.oplog import CRASH_ENV
from tests.test_backfill import sequential_replay
from tests.version_domains import BalancesCents, BalancesDoubled

WHO = {"principal": "ops@example", "reason": "balances in cents"}


def write(store: Store, n: int = 12) -> Any:
    accounts = [f"acct-{i}" for i in range(6)]
    store.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
    res = None
    for k in range(n):
        res = store.submit_many([(BankAccount, accounts[k % 6], Deposit(amount=k + 1) if k % 4 else Withdraw(amount=1))])
    return res[0]


def main_rows(store: Store) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in store.query("SELECT * FROM balances").to_pylist())


def built(store_factory, *more: Any) -> Store:
    """Balances v1 live, BalancesCents (v2) and ``more`` built beside by backfills, all followed."""
    store = store_factory("v", partitions=2, projections=[Balances])
    res = write(store)
    for p in (BalancesCents, *more):
        backfill(store.layout.uri, p, [BankAccount], parallelism=1, progress=False)
        store.projections.wait_for(f"balances__v{p.version}", res, timeout=30)
    store.projections.wait_for("balances", res, timeout=30)
    return store


@pytest.mark.both_backends
def test_check_cutover_rollback_drop_on_the_projector(store_factory):
    store = built(store_factory, BalancesDoubled)
    p = store.projections
    v1 = main_rows(store)
    rows = {(r["instance"], r["version"], r["current"], r["followed"]) for r in p.versions()}
    assert rows == {("balances", 1, True, True), ("balances__v2", 2, False, True), ("balances__v3", 3, False, True)}
    ok = p.check("balances", 2)  # differs by design; its declared checks hold
    assert ok["ok"] and ok["differs"] == ["balances"] and all(c["ok"] for c in ok["cutover_checks"])
    bad = p.check("balances", 3)
    assert not bad["ok"] and bad["tables"][0]["key"] == ["account"] and bad["tables"][0]["changed"] > 0
    assert bad["tables"][0]["sample"], bad
    with pytest.raises(CutoverRefused, match="table balances: .* rows changed"):
        p.cutover("balances", 3, **WHO)
    with pytest.raises(EsActorsError, match="principal and a reason"):
        p.cutover("balances", 2, principal="", reason="x")
    assert p.cutover("balances", 2, **WHO)["current"] == "balances__v2"
    assert main_rows(store) == sorted((a, o, b * 100, e, v) for a, o, b, e, v in v1)
    res = store.submit_many([(BankAccount, "acct-1", Deposit(amount=5))])[0]
    p.wait_for("balances__v2", res, timeout=30)
    assert {r[0]: r[2] for r in main_rows(store)}["acct-1"] == {r[0]: r[2] for r in v1}["acct-1"] * 100 + 500
    assert p.rollback("balances", **WHO)["current"] == "balances"
    p.wait_for("balances", res, timeout=30)
    assert {r[0]: r[2] for r in main_rows(store)}["acct-1"] == {r[0]: r[2] for r in v1}["acct-1"] + 5
    p.cutover("balances", 2, **WHO)
    with pytest.raises(EsActorsError, match="is the current version"):
        p.drop("balances", 2, **WHO)
    with pytest.raises(EsActorsError, match="declared by the code the projector runs"):
        p.drop("balances", 1, **WHO)
    assert p.drop("balances", 3, **WHO)["dropped"] == "balances__v3"
    assert {r["instance"] for r in p.versions()} == {"balances", "balances__v2"}
    assert "balances__v3" not in {r["projection"] for r in p.status()}  # no longer followed
    log = [(o["operation"], o["to_instance"], o["outcome"]) for o in p.operations()]
    assert log == [("cutover", "balances__v3", "refused"), ("cutover", "balances__v2", "done"),
                   ("rollback", "balances", "done"), ("cutover", "balances__v2", "done"),
                   ("drop", None, "refused"), ("drop", None, "refused"), ("drop", None, "done")]  # refusals before the start too
    # the CLI: the same operations (here through the running projector)
    cli = CliRunner()
    out = cli.invoke(main, ["projections", "list", "--store", store.layout.uri, "--json"])
    assert out.exit_code == 0, out.output
    assert [r["instance"] for r in json.loads(out.output) if r["current"]] == ["balances__v2"]
    out = cli.invoke(main, ["projections", "check", "balances", "--version", "1", "--store", store.layout.uri])
    assert out.exit_code == 1 and "differs" in out.output, out.output  # v1 has other rows than the cents
    out = cli.invoke(main, ["projections", "rollback", "balances", "--store", store.layout.uri, "--principal", "me", "--reason", "r"])
    assert out.exit_code == 0 and "current balances " in out.output, out.output
    out = cli.invoke(main, ["projections", "cutover", "balances", "--version", "9", "--store", store.layout.uri,
                            "--principal", "me", "--reason", "r"])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "has no version 9" in out.output, out.output
    out = cli.invoke(main, ["projections", "log", "--store", store.layout.uri])
    assert out.exit_code == 0 and out.output.count("rollback") == 2, out.output


def test_in_process_cutover_then_code_moves_on_to_the_build(store_factory):
    store = built(store_factory)
    root = store.root
    v1 = main_rows(store)
    store.close()
    ro = Store.open(root, read_only=True)
    assert ro.projections.cutover("balances", 2, **WHO)["current"] == "balances__v2"  # no projector: in process
    # code at v2: runs on the built instance, not a rebuild of "balances"
    s2 = Store.open(root, [BankAccount], projections=[BalancesCents])
    assert s2.projections.call("projections") == {"balances": 2}
    res = s2.submit_many([(BankAccount, "acct-2", Deposit(amount=3))])[0]
    s2.projections.wait_for("balances", res, timeout=30)  # the declared name waits for the instance it runs as
    after = {r[0]: r[2] for r in main_rows(s2)}
    assert after["acct-2"] == {r[0]: r[2] for r in v1}["acct-2"] * 100 + 300
    versions = {r["instance"]: r for r in s2.projections.versions()}
    assert versions["balances"]["status"] == "not followed" and versions["balances"]["lag_events"] >= 1
    with pytest.raises(CutoverRefused, match="'balances' is 1 events behind the log and the projector does not follow it"):
        s2.projections.rollback("balances", **WHO)
    assert s2.projections.rollback("balances", force=True, **WHO)["forced"]
    assert s2.projections.operations()[-1]["forced"] and s2.projections.operations()[-1]["outcome"] == "done"
    # the build the running code declares (it runs as balances__v2) is not dropped from under it
    with pytest.raises(EsActorsError, match="'balances__v2' is declared by the code the projector runs"):
        s2.projections.drop("balances", 2, **WHO)
    assert s2.projections.call("projections") == {"balances": 2}
    res = s2.submit_many([(BankAccount, "acct-2", Deposit(amount=1))])[0]
    s2.projections.wait_for("balances", res, timeout=30)
    assert s2.projections.operations()[-1]["outcome"] == "refused"  # refused before it started: logged
    s2.close()
    # code still at v1: follows v1 again and keeps the build following (a store with a build reopens)
    s1 = Store.open(root, [BankAccount], projections=[Balances])
    res = s1.submit_many([(BankAccount, "acct-3", Deposit(amount=1))])[0]
    s1.projections.wait_for("balances", res, timeout=30)
    s1.projections.wait_for("balances__v2", res, timeout=30)
    assert {r["instance"] for r in s1.projections.versions() if r["followed"]} == {"balances", "balances__v2"}
    s1.close()
    # in process: the old live schema dropped after a cutover leaves main's views on the current version
    ro.projections.cutover("balances", 2, **WHO)
    ro.projections.drop("balances", 1, **WHO)
    assert [r["instance"] for r in ro.projections.versions()] == ["balances__v2"]
    con = duckdb.connect(str(root / "readmodels" / "readmodels.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM main.balances").fetchall()[0][0] == 6
    finally:
        con.close()


# -- a process killed at each step -------------------------------------------------------------

_RUN = """
import sys
from es_actors.store import Store
root, op = sys.argv[1], sys.argv[2]
s = Store.open(root, read_only=True)
if op == "cutover":
    s.projections.cutover("balances", 2, "ops@example", "kill test")
else:
    s.projections.rollback("balances", "ops@example", "kill test")
"""


def run_killed(root: Path, op: str, step: str | None) -> int:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "RAY_AUTH_MODE": "disabled"}
    env.pop(CRASH_ENV, None)
    if step:
        env[CRASH_ENV] = step
    out = subprocess.run([sys.executable, "-c", _RUN, str(root), op], env=env, timeout=120, capture_output=True, text=True)
    assert out.returncode in (0, -signal.SIGKILL), out.stderr[-2000:]
    return out.returncode


def state(root: Path) -> tuple[list[str], str, list[tuple[Any, ...]], dict[str, list[tuple[Any, ...]]], list[tuple[str, str]]]:
    con = duckdb.connect(str(root / "readmodels" / "readmodels.duckdb"), read_only=True)
    try:
        current = [r[0] for r in con.execute("SELECT instance FROM es_actors.current WHERE projection = 'balances'").fetchall()]
        view = con.execute("SELECT sql FROM duckdb_views() WHERE schema_name = 'main' AND view_name = 'balances'").fetchall()[0][0]
        shown = view.split(" FROM ")[1].split(".")[0].strip('"')
        main = sorted(con.execute("SELECT * FROM main.balances").fetchall())
        schemas = {s: sorted(con.execute(f'SELECT * FROM "{s}".balances').fetchall()) for s in ("balances", "balances__v2")}
    finally:
        con.close()
    ops = [(o["operation"], o["outcome"]) for o in Store.open(root, read_only=True).projections.operations()]
    return current, shown, main, schemas, ops


def test_a_process_killed_at_each_step_of_cutover_and_rollback_leaves_one_complete_current_version(store_factory, tmp_path):
    store = built(store_factory)
    base = store.root
    store.close()
    replay = {"balances": sequential_replay(base, Balances)["balances"],
              "balances__v2": sequential_replay(base, BalancesCents)["balances"]}
    cut = tmp_path / "cut"
    shutil.copytree(base, cut, symlinks=True)
    assert run_killed(cut, "cutover", None) == 0  # the start of the rollback runs
    for op, start, before, after in (("cutover", base, "balances", "balances__v2"), ("rollback", cut, "balances__v2", "balances")):
        for step in CRASH_STEPS:
            root = tmp_path / f"{op}-{step}"
            shutil.copytree(start, root, symlinks=True)
            assert run_killed(root, op, step) == -signal.SIGKILL, (op, step)
            current, shown, main, schemas, ops = state(root)
            done = step == "committed"
            want = after if done else before
            assert len(current) <= 1 and (current[0] if current else "balances") == shown == want, (op, step, current, shown)
            assert main == schemas[want] == replay[want], (op, step)  # complete: a replay of its version
            assert ops[-1] == (op, "done" if done else "interrupted"), (op, step, ops)
            if not done:  # an interrupted operation is simply run again
                assert run_killed(root, op, None) == 0
                current, shown, main, _, ops = state(root)
                assert shown == after and main == replay[after] and ops[-2:] == [(op, "interrupted"), (op, "done")]
