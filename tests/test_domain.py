"""The domain core is plain Python: decide and evolve work without Ray or files."""

import pytest
from pydantic import ValidationError

from es_actors import DomainRegistry, InvalidPayload, UnknownAggregateType, UnknownCommand
from es_actors.examples.bank import (
    Account,
    AccountOpened,
    BankAccount,
    Deposit,
    InsufficientFunds,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    Withdraw,
)


def test_decide_and_evolve_compute_the_balance():
    state = BankAccount.initial_state()
    for cmd in [OpenAccount(owner="ann"), Deposit(amount=100), Withdraw(amount=30)]:
        for event in BankAccount.decide(state, cmd):
            state = BankAccount.evolve(state, event)
    assert state == Account(opened=True, owner="ann", balance=70)


def test_overdraft_is_a_domain_error_and_state_is_untouched():
    state = BankAccount.fold([AccountOpened(owner="ann"), MoneyDeposited(amount=10)])
    with pytest.raises(InsufficientFunds, match="no overdraft"):
        BankAccount.decide(state, Withdraw(amount=11))
    assert state.balance == 10


def test_evolve_returns_a_new_state():
    before = BankAccount.fold([AccountOpened(owner="ann")])
    after = BankAccount.evolve(before, MoneyDeposited(amount=5))
    assert before.balance == 0 and after.balance == 5


def test_event_types_have_stable_names_and_versions():
    assert MoneyWithdrawn.event_type == "MoneyWithdrawn"
    assert MoneyWithdrawn.schema_version == 1
    assert Deposit.command_type == "Deposit"


def test_commands_validate_their_payload():
    with pytest.raises(ValidationError):
        Deposit(amount=-1)


def test_registry_resolves_and_rejects_clearly():
    reg = DomainRegistry([BankAccount])
    assert reg.command("BankAccount", "Deposit", {"amount": 3}) == Deposit(amount=3)
    with pytest.raises(UnknownAggregateType, match="Nope"):
        reg.aggregate("Nope")
    with pytest.raises(UnknownCommand, match="Teleport"):
        reg.command("BankAccount", "Teleport", {})
    with pytest.raises(InvalidPayload, match="Deposit"):
        reg.command("BankAccount", "Deposit", {"amount": "lots"})
    with pytest.raises(InvalidPayload, match="unknown event type"):
        reg.event_class("Vanished")


def test_defining_aggregates_loads_neither_ray_duckdb_nor_pyarrow():
    """The domain core is pure: code (and tests) that only define aggregates start fast and
    need no runtime. Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from es_actors import Aggregate, Command, DomainError, Event, StoreConfig, EsActorsError\n"
        "print(sorted(m for m in ('ray', 'duckdb', 'pyarrow') if m in sys.modules))\n"
        "from es_actors import Store\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "True"]
