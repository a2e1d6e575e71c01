"""Property: many concurrent clients, one aggregate -> gapless versions 1..n, no lost update."""

from __future__ import annotations

import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors import ConcurrencyError
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(
    clients=st.integers(2, 6),
    amounts=st.lists(st.integers(1, 1000), min_size=1, max_size=12),
    second_store=st.booleans(),
)
def test_blind_concurrent_deposits_get_gapless_versions_and_sum_exactly(shared_store, clients, amounts, second_store):
    store, other, counter = shared_store
    account = f"blind-{next(counter)}"
    store.aggregate(BankAccount, account).submit(OpenAccount(owner="p"), expected_version=0)
    handles = [(other if second_store and c % 2 else store).aggregate(BankAccount, account) for c in range(clients)]
    versions: list[int] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for amount in amounts:
            v = handles[c].submit(Deposit(amount=amount)).version
            with lock:
                versions.append(v)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = clients * len(amounts)
    assert sorted(versions) == list(range(2, n + 2))  # each acknowledged command got its own version
    hist = store.history("BankAccount", account)
    assert [h.version for h in hist] == list(range(1, n + 2))
    state = store.aggregate(BankAccount, account).state()
    assert state.version == n + 1 and state.state.balance == clients * sum(amounts)


@SETTINGS
@given(clients=st.integers(2, 5), rounds=st.integers(1, 6))
def test_optimistic_read_modify_write_loses_no_update(shared_store, clients, rounds):
    """Each client reads the version, submits with expected_version, and retries on conflict."""
    store, _other, counter = shared_store
    account = f"occ-{next(counter)}"
    acct = store.aggregate(BankAccount, account)
    acct.submit(OpenAccount(owner="p"), expected_version=0)
    conflicts = []

    def client() -> None:
        for _ in range(rounds):
            while True:
                v = acct.state().version
                try:
                    acct.submit(Deposit(amount=1), expected_version=v)
                    break
                except ConcurrencyError as exc:
                    assert exc.actual > exc.expected == v
                    conflicts.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = acct.state()
    assert state.state.balance == clients * rounds and state.version == clients * rounds + 1
    assert [h.version for h in acct.history()] == list(range(1, clients * rounds + 2))
