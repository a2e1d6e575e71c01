"""CPU cost per command of the command checks (no Ray, no files): the envelope check
(es_actors/write/envelope.py, run once in the client and once in the actor) and the stored-event
read-back check (DomainRegistry.stored_payload) against the plain ``model_dump_json`` it replaces.

Run: .venv/bin/python -m benchmarks.envelope_cost
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.write.envelope import validate_envelope
from es_actors.write.protocol import CommandEnvelope
from es_actors.examples.bank import AccountOpened, BankAccount, MoneyDeposited

N = 200_000


def per_call_us(fn: Callable[[], Any], n: int = N) -> float:
    for _ in range(n // 10):
        fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main() -> None:
    config = StoreConfig()
    registry = DomainRegistry([BankAccount])
    cid = os.urandom(16).hex()
    plain = CommandEnvelope("BankAccount", "acc-000123", cid, "Deposit", '{"amount":100}', 7)
    audited = CommandEnvelope("BankAccount", "acc-000123", cid, "Deposit", '{"amount":100}', 7, principal="alice",
                              correlation_id="order-9", causation_id="evt-3", reason="salary")
    with_md = CommandEnvelope("BankAccount", "acc-000123", cid, "Deposit", '{"amount":100}', 7, principal="alice",
                              correlation_id="order-9",
                              metadata={"channel": "web", "ip": "10.0.0.1", "tags": ["a", "b"]})
    deposited, opened = MoneyDeposited(amount=100), AccountOpened(owner="ann")
    rows = [
        ("validate_envelope, no audit (the common case)", per_call_us(lambda: validate_envelope(plain, config))),
        ("validate_envelope, ids and reason", per_call_us(lambda: validate_envelope(audited, config))),
        ("validate_envelope, ids and 3-key metadata", per_call_us(lambda: validate_envelope(with_md, config))),
        ("MoneyDeposited.model_dump_json (before)", per_call_us(deposited.model_dump_json)),
        ("registry.stored_payload(MoneyDeposited) (after)", per_call_us(lambda: registry.stored_payload(deposited))),
        ("AccountOpened.model_dump_json (before)", per_call_us(opened.model_dump_json)),
        ("registry.stored_payload(AccountOpened) (after)", per_call_us(lambda: registry.stored_payload(opened))),
    ]
    for name, us in rows:
        print(f"{us:7.2f} us  {name}")


if __name__ == "__main__":
    main()
