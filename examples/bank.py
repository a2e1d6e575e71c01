"""A bank account, as a decider: no Ray, no files, just the business rules.

balance = deposits - withdrawals; an account must be opened first; no overdraft.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from pydantic import Field

from es_actors import Aggregate, Command, DomainError, Event


# -- events (stored; names and schema versions are a contract) ---------------------------
class AccountOpened(Event):
    owner: str


class MoneyDeposited(Event):
    amount: int = Field(gt=0, description="minor units (cents)")


class MoneyWithdrawn(Event):
    amount: int = Field(gt=0, description="minor units (cents)")


# -- commands ---------------------------------------------------------------------------
class OpenAccount(Command):
    owner: str = Field(min_length=1)


class Deposit(Command):
    amount: int = Field(gt=0)


class Withdraw(Command):
    amount: int = Field(gt=0)


# -- state and errors -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Account:
    """State can be any immutable value; a frozen dataclass keeps evolve cheap."""

    opened: bool = False
    owner: str = ""
    balance: int = 0


class AccountNotOpen(DomainError):
    pass


class AccountAlreadyOpen(DomainError):
    pass


class InsufficientFunds(DomainError):
    pass


class BankAccount(Aggregate[Account]):
    aggregate_type = "BankAccount"
    commands = (OpenAccount, Deposit, Withdraw)
    events = (AccountOpened, MoneyDeposited, MoneyWithdrawn)

    @classmethod
    def initial_state(cls) -> Account:
        return Account()

    @classmethod
    def decide(cls, state: Account, command: Command) -> Sequence[Event]:
        match command:
            case OpenAccount(owner=owner):
                if state.opened:
                    raise AccountAlreadyOpen("account is already open")
                return [AccountOpened(owner=owner)]
            case Deposit(amount=amount):
                if not state.opened:
                    raise AccountNotOpen("deposit into an account that is not open")
                return [MoneyDeposited(amount=amount)]
            case Withdraw(amount=amount):
                if not state.opened:
                    raise AccountNotOpen("withdrawal from an account that is not open")
                if amount > state.balance:
                    raise InsufficientFunds(f"balance {state.balance} is less than {amount}: no overdraft")
                return [MoneyWithdrawn(amount=amount)]
        raise TypeError(f"unhandled command {command!r}")

    @classmethod
    def evolve(cls, state: Account, event: Event) -> Account:
        match event:
            case AccountOpened(owner=owner):
                return replace(state, opened=True, owner=owner)
            case MoneyDeposited(amount=amount):
                return replace(state, balance=state.balance + amount)
            case MoneyWithdrawn(amount=amount):
                return replace(state, balance=state.balance - amount)
        return state
