"""The bench data sets' probe aggregates (benchmarks/datasets.py): read_history_10m relies on each
probe having exactly 100 events spread over its partition's whole log, in a store es_actors reads."""

from __future__ import annotations

import json

import pytest

np = pytest.importorskip("numpy")
pq = pytest.importorskip("pyarrow.parquet")

from benchmarks.datasets import PROBE_EVENTS, bank_account_id, probe_id, write_bank_store  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bank")
    meta = write_bank_store(root, n_accounts=300, per_account=6, partitions=2, seed=7, probes=12)
    return root, meta


def test_probes_have_exactly_their_events_spread_over_the_whole_log(dataset) -> None:
    root, meta = dataset
    table = pq.read_table(sorted((root / "store" / "log").glob("*/current/*.parquet")))
    t = table.to_pydict()
    total = 300 * 6 + 12 * PROBE_EVENTS
    assert meta["events"] == total == len(t["position"])
    for p in (0, 1):  # positions of each partition are 1..n, each once
        pos = sorted(x for x, q in zip(t["position"], t["partition"]) if q == p)
        assert pos == list(range(1, len(pos) + 1))
    by_time = table.sort_by("recorded_at")  # the global order (recorded_at is 1 ms apart)
    ids = np.array(by_time.column("aggregate_id").to_pylist())
    versions = np.array(by_time.column("version").to_pylist())
    for i in range(12):
        at = np.flatnonzero(ids == probe_id(i))
        assert list(versions[at]) == list(range(1, PROBE_EVENTS + 1))
        gaps = np.diff(at)
        assert gaps.min() >= total // (12 * PROBE_EVENTS) - 1 and at[0] < total * 0.1 and at[-1] > total * 0.9
    assert (ids == bank_account_id(0)).sum() == 6


def test_the_store_reads_a_probe_and_the_expected_read_model_counts_it(dataset) -> None:
    from es_actors import Store
    from es_actors.examples.bank import BankAccount, MoneyDeposited, MoneyWithdrawn

    root, meta = dataset
    store = Store.open(root / "store", [BankAccount], read_only=True)
    history = store.history("BankAccount", probe_id(3))
    assert [e.version for e in history] == list(range(1, PROBE_EVENTS + 1))
    balance = sum(e.event.amount if isinstance(e.event, MoneyDeposited) else -e.event.amount
                  for e in history if isinstance(e.event, (MoneyDeposited, MoneyWithdrawn)))
    expected = pq.read_table(root / "expected.parquet").to_pylist()
    row = next(r for r in expected if r["account"] == probe_id(3))
    assert (row["balance"], row["events"], row["version"]) == (balance, PROBE_EVENTS, PROBE_EVENTS)
    assert len(expected) == 300 + 12
    assert json.loads((root / "meta.json").read_text())["probes"] == 12
