"""CPU of one lone writer's round trip, split by side: a batch of one Deposit through the
client's envelope building, the direct link's wire form and pickling, and the partition's
``handle_batch`` (real files, fdatasync stubbed so only CPU counts). No Ray.

The command path's per-batch overhead shows here in microseconds, where the append benches
see it only as a few percent at moderate concurrency. Compare two checkouts with PYTHONPATH.

Run: .venv/bin/python -m benchmarks.round_trip_cpu
"""

from __future__ import annotations

import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

os.fdatasync = lambda fd: None  # CPU only: the disk's sync is measured by the append benches

from es_actors.config import StoreConfig  # noqa: E402
from es_actors.domain import DomainRegistry  # noqa: E402
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount  # noqa: E402
from es_actors.storage.layout import StoreLayout  # noqa: E402
from es_actors.store import Audit, Store  # noqa: E402
from es_actors.write.partition import Partition  # noqa: E402
from es_actors.write.protocol import batch_from_wire, batch_to_wire, results_from_wire, results_to_wire  # noqa: E402

N, ROUNDS = 5000, 9


def main() -> None:
    root = Path(tempfile.mkdtemp()) / "s"
    layout = StoreLayout(root)
    descriptor = layout.create_or_check(1, 1)
    config = StoreConfig(partitions=1)
    store = Store(layout, descriptor, DomainRegistry([BankAccount]), config, None)  # client side only: no actors
    part = Partition(layout, 0, DomainRegistry([BankAccount]), config)
    part.handle_batch([store._command_item("BankAccount", "a1", OpenAccount(owner="x"), None, None, Audit())])
    cmd = Deposit(amount=1)
    actor, client, link = [], [], []
    for _ in range(ROUNDS):
        items = [store._command_item("BankAccount", "a1", cmd, None, None, Audit()) for _ in range(N)]
        batches = [batch_from_wire(pickle.loads(pickle.dumps(batch_to_wire([it]), protocol=5))) for it in items]
        t = time.perf_counter()
        outs = [part.handle_batch(b) for b in batches]
        actor.append((time.perf_counter() - t) / N * 1e6)
        t = time.perf_counter()
        for i in range(N):
            item = store._command_item("BankAccount", "a1", cmd, None, None, Audit())
            data = pickle.dumps(batch_to_wire([item]), protocol=5)
            back = results_from_wire(pickle.loads(pickle.dumps(results_to_wire(outs[i]), protocol=5)))
            store._convert(item, back[0])
        client.append((time.perf_counter() - t) / N * 1e6)
        t = time.perf_counter()
        for i in range(N):
            batch_from_wire(pickle.loads(data))
            pickle.dumps(results_to_wire(outs[i]), protocol=5)
        link.append((time.perf_counter() - t) / N * 1e6)
    m = statistics.median
    print(f"per batch of one, median of {ROUNDS} rounds of {N}: partition handle_batch {m(actor):.1f} us, "
          f"client side {m(client):.1f} us, actor's side of the link {m(link):.1f} us")


if __name__ == "__main__":
    main()
