"""Opening a store whose projector already runs with other projections fails with
ProjectorConflict and leaves that projector serving its own store."""

from __future__ import annotations

import pytest

from es_actors import Store
from es_actors.errors import ProjectorConflict
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from es_actors.examples.bank_projections import Balances, BalancesPy


def test_a_second_open_with_other_projections_is_a_conflict(ray_session, tmp_path):
    first = Store.open(tmp_path / "s", [BankAccount], projections=[Balances])
    try:
        with pytest.raises(ProjectorConflict, match="a projector already runs .* with projections"):
            Store.open(tmp_path / "s", [BankAccount], projections=[BalancesPy])
        acct = first.aggregate(BankAccount, "a1")
        acct.submit(OpenAccount(owner="alice"))
        r = acct.submit(Deposit(amount=7))
        first.projections.wait_for("balances", r, timeout=30)  # the first store's projector still serves
        assert first.query("SELECT balance FROM balances WHERE account = 'a1'").to_pylist() == [{"balance": 7}]
    finally:
        first.close()
