"""A Store on the whole-object backend (``blobdir:///path``): commands, state and history through the
partition actors and the storage protocols, surviving a restart; what it cannot do yet is refused clearly."""

from __future__ import annotations


from es_actors import Store
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount, Withdraw


def write_read_recover(uri: str, while_open=lambda store: None) -> None:
    """Commands, state and history through the partition actors on a whole-object store, then a
    reopen that recovers them and goes on (``while_open(store)`` runs before the first close)."""
    store = Store.open(uri, [BankAccount], partitions=2, seal_rows=5)
    try:
        for i in range(4):
            acct = store.aggregate(BankAccount, f"a{i}")
            acct.submit(OpenAccount(owner="ann"), expected_version=0)
            for _ in range(3):
                acct.submit(Deposit(amount=10))
        acct.submit(Withdraw(amount=5))
        assert store.aggregate(BankAccount, "a3").state().state.balance == 25
        while_open(store)
    finally:
        store.close()
    store = Store.open(uri, [BankAccount])
    try:
        for i in range(4):
            acct = store.aggregate(BankAccount, f"a{i}")
            assert [h.version for h in acct.history()] == [1, 2, 3, 4] + ([5] if i == 3 else [])
            assert acct.state().version == (5 if i == 3 else 4)
        assert store.aggregate(BankAccount, "a0").submit(Deposit(amount=1)).version == 5
        assert sum(s["sealed_segments"] for s in store.stats()) >= 2
    finally:
        store.close()



def test_a_store_on_whole_objects_writes_reads_and_recovers(ray_session, tmp_path):
    def queries_every_event(store):
        n = store.query("SELECT count(*) AS n FROM events").column("n")[0].as_py()
        assert n == sum(len(store.aggregate(BankAccount, f"a{i}").history()) for i in range(4))

    write_read_recover(f"blobdir://{tmp_path / 'objects'}", queries_every_event)
    assert not (tmp_path / "objects" / "tail").exists(), "no local-disk files in a whole-object store"
