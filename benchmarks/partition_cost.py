"""Actor-side CPU per command: Partition.handle_batch (no Ray, real files) on 2000-command
Deposit batches; ``audit`` adds a principal and a correlation id to each command.

Run: .venv/bin/python -m benchmarks.partition_cost [audit]   (compare two checkouts with PYTHONPATH)
"""
import os, sys, tempfile, time
from pathlib import Path
from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.write.partition import Partition
from es_actors.storage.layout import StoreLayout
from es_actors.examples.bank import BankAccount
from benchmarks.protocol_cost import command  # the typed envelope, or the tuples of before

tmp = Path(tempfile.mkdtemp())
part = Partition(StoreLayout(tmp / "s"), 0, DomainRegistry([BankAccount]), StoreConfig(partitions=1, seal_rows=10**7))
N_ACC, B = 1000, 2000
part.handle_batch([command("BankAccount", f"a{i}", f"o{i}", "OpenAccount", '{"owner":"x"}') for i in range(N_ACC)])
audit = "audit" in sys.argv
n = 0
def batch():
    global n
    out = []
    for k in range(B):
        n += 1
        out.append(command("BankAccount", f"a{n % N_ACC}", os.urandom(16).hex(), "Deposit", '{"amount":1}',
                           "alice" if audit else None, "c-1" if audit else None))
    return out
for _ in range(3): part.handle_batch(batch())
best = []
for _ in range(5):
    bs = [batch() for _ in range(5)]
    t0 = time.process_time()
    for b in bs: part.handle_batch(b)
    best.append((time.process_time() - t0) / (5 * B) * 1e6)
print(f"{min(best):.2f} us/command CPU (best of 5), median {sorted(best)[2]:.2f}", "audit" if audit else "")
part.close()
