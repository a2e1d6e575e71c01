"""The bank account in the style of the Python ``eventsourcing`` library, on SQLite (peer system).

The library's SQLite recorder uses WAL journal mode and leaves ``synchronous`` at SQLite's
default (FULL), so each save is one durable transaction, like a command in es_actors.
The application keeps aggregates in the library's own aggregate cache (the analogue of
es_actors keeping aggregates in memory in their partition actor) with fast-forward off,
as fits a single writer; ``repository.get`` deep-copies from the cache (the library default).
"""

from __future__ import annotations

from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


class EslBankAccount(Aggregate):
    @staticmethod
    def create_id(account_id: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"bank/{account_id}")

    @event("AccountOpened")
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.balance = 0

    @event("MoneyDeposited")
    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.balance += amount


class ExpectedVersionMismatch(Exception):
    pass


class EslBank(Application):
    """Commands as application methods: get, decide (aggregate method), save."""

    def open_accounts(self, account_ids: list[str]) -> None:
        self.save(*[EslBankAccount(a) for a in account_ids])

    def deposit(self, account: UUID, amount: int, expected_version: int) -> int:
        acct: EslBankAccount = self.repository.get(account)
        if acct.version != expected_version:
            raise ExpectedVersionMismatch(f"{account}: expected {expected_version}, at {acct.version}")
        acct.deposit(amount)
        self.save(acct)
        return acct.version


def open_sqlite_bank(db_path: Path, cache_size: int = 10_000) -> EslBank:
    return EslBank(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(db_path),
            "AGGREGATE_CACHE_MAXSIZE": str(cache_size),
            "AGGREGATE_CACHE_FASTFORWARD": "n",
        }
    )
