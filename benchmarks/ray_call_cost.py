"""CPU cost of one Ray actor call, in the caller and in the actor (figures in adrs/ADR-006).

Run: RAY_AUTH_MODE=disabled .venv/bin/python -m benchmarks.ray_call_cost

Each call carries a 17-command batch shaped like the write path's, four calls in flight, for
a sync actor and an async actor, with and without per-task events. Light on purpose.
"""

from __future__ import annotations

import os
import time

import psutil
import ray

from es_actors.write.protocol import CommandEnvelope

CALLS = 3000
BATCH = [
    CommandEnvelope("BankAccount", "acc", os.urandom(16).hex(), "Deposit", '{"amount":1}', 1)
] * 17


@ray.remote(num_cpus=0)
class SyncActor:
    def pid(self) -> int:
        return os.getpid()

    def echo(self, x: object) -> object:
        return x


@ray.remote(num_cpus=0)
class AsyncActor:
    def pid(self) -> int:
        return os.getpid()

    async def echo(self, x: object) -> object:
        return x


def measure(label: str, actor_cls: object, **options: object) -> None:
    actor = actor_cls.options(**options).remote()  # type: ignore[attr-defined]
    remote = psutil.Process(ray.get(actor.pid.remote()))
    me = psutil.Process()
    cpu = lambda p: sum(p.cpu_times()[:2])  # noqa: E731
    a0, d0, t0 = cpu(remote), cpu(me), time.perf_counter()
    refs = []
    for _ in range(CALLS):
        refs.append(actor.echo.remote(BATCH))
        if len(refs) >= 4:
            ray.get(refs.pop(0))
    ray.get(refs)
    elapsed = time.perf_counter() - t0
    print(
        f"{label:<32} calls/s={CALLS / elapsed:7.0f}  actor cpu/call={(cpu(remote) - a0) / CALLS * 1e6:5.0f} us  "
        f"caller cpu/call={(cpu(me) - d0) / CALLS * 1e6:5.0f} us"
    )
    ray.kill(actor)


def main() -> None:
    from es_actors.runtime.cluster import start_local_ray  # loopback only (ADR-012)

    start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    for _ in range(2):
        measure("sync actor", SyncActor)
        measure("sync actor, no task events", SyncActor, enable_task_events=False)
        measure("async actor", AsyncActor)
    ray.shutdown()


if __name__ == "__main__":
    main()
