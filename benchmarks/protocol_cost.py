"""What the write protocol's message types cost: pickling a batch item and an item result
(us per item, dumps and loads apart), and a round trip over the direct link (es_actors/write/
direct_link.py) with a server that answers precomputed results (transport + pickling, no
decide). Runs on the typed protocol (es_actors/write/protocol.py) and, to compare, on a checkout
from before it (tagged tuples): ``PYTHONPATH=/path/to/old .venv/bin/python -m benchmarks.protocol_cost``.

Run: .venv/bin/python -m benchmarks.protocol_cost
"""

from __future__ import annotations

import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.examples.bank import BankAccount
from es_actors.storage.layout import StoreLayout
from es_actors.write.direct_link import DirectServer, connect

try:
    from es_actors.write.partition import Partition
except ImportError:  # pragma: no cover
    raise

try:
    from es_actors.write.protocol import CommandEnvelope

    PROTOCOL = "typed"

    def command(atype: str, aid: str, cid: str, ctype: str, payload: str, principal: str | None = None,
                correlation_id: str | None = None) -> Any:
        return CommandEnvelope(atype, aid, cid, ctype, payload, principal=principal, correlation_id=correlation_id)

except ImportError:  # the tagged tuples of before
    PROTOCOL = "tuples"

    def command(atype: str, aid: str, cid: str, ctype: str, payload: str, principal: str | None = None,
                correlation_id: str | None = None) -> Any:
        meta = None if principal is None else {"principal": principal, "correlation_id": correlation_id,
                                               "causation_id": None, "reason": None, "metadata": None}
        return ("command", atype, aid, cid, None, (ctype, payload), meta)


def deposits(n: int, accounts: int, principal: str | None = None) -> list[Any]:
    return [command("BankAccount", f"a{i % accounts}", os.urandom(16).hex(), "Deposit", '{"amount":1}', principal)
            for i in range(n)]


def pickle_us(objs: list[Any], repeat: int = 300) -> tuple[float, float, float]:
    """(dumps us/item, loads us/item, bytes/item), best of ``repeat``."""
    d, lo = [], []
    data = b""
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = pickle.dumps(objs, protocol=5)
        t1 = time.perf_counter()
        pickle.loads(data)
        t2 = time.perf_counter()
        d.append(t1 - t0)
        lo.append(t2 - t1)
    n = len(objs)
    return min(d) / n * 1e6, min(lo) / n * 1e6, len(data) / n


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    part = Partition(StoreLayout(tmp / "s"), 0, DomainRegistry([BankAccount]), StoreConfig(partitions=1))
    opens = [command("BankAccount", f"a{i}", f"o{i}", "OpenAccount", '{"owner":"x"}') for i in range(200)]
    part.handle_batch(opens)
    print(f"protocol: {PROTOCOL}")
    for label, principal in (("no audit", None), ("principal", "alice")):
        items = deposits(200, 200, principal)
        results = part.handle_batch(items)
        dumps_i, loads_i, size_i = pickle_us(items)
        dumps_r, loads_r, size_r = pickle_us(results)
        print(f"  item ({label}):   dumps {dumps_i:.3f} us, loads {loads_i:.3f} us, {size_i:.0f} bytes")
        print(f"  result ({label}): dumps {dumps_r:.3f} us, loads {loads_r:.3f} us, {size_r:.0f} bytes")
    for size in (1, 200):
        items = deposits(size, 200)
        answer = part.handle_batch(items)
        server = DirectServer(lambda batch: answer, "bench")
        conn = connect(server.address, server.authkey)
        samples = []
        for _ in range(2000 if size == 1 else 400):
            t0 = time.perf_counter()
            conn.send_bytes(pickle.dumps(items, protocol=5))
            pickle.loads(conn.recv_bytes())
            samples.append(time.perf_counter() - t0)
        conn.close()
        server.close()
        med = statistics.median(samples) * 1e6
        print(f"  direct link round trip, batch of {size}: median {med:.1f} us ({med / size:.2f} us/command)")
    part.close()


if __name__ == "__main__":
    main()
