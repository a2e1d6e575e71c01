"""Client batching (es_actors/write/client.py) against a real Ray-free partition; a fake
stands in for the Ray actor handle only (``handle_batch.remote`` -> a ref with ``future()``)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
from ray.exceptions import RayActorError

from es_actors import Overloaded, StoreClosed
from es_actors.config import StoreConfig
from es_actors.write.client import PartitionChannel
from es_actors.write.partition import Partition
from es_actors.write.protocol import BatchItem, ItemResult
from tests.unit.helpers import command, open_partition


class FakeActor:
    """What the channel uses of a Ray actor handle, running a real Partition on a thread.

    ``hold`` keeps calls waiting until released; ``die_after_write`` makes the next call
    durable and then lose its reply, like an actor that crashed before answering."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.batches: list[list[BatchItem]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.die_after_write = 0
        self.handle_batch = self  # the channel calls actor.handle_batch.remote(items)

    def remote(self, items: list[BatchItem]) -> "FakeActor._Ref":
        future: Future[Any] = Future()

        def run() -> None:
            self.hold.wait(10)
            self.batches.append(list(items))
            results = self.partition.handle_batch(items)
            if self.die_after_write:
                self.die_after_write -= 1
                future.set_exception(RayActorError())
            else:
                future.set_result(results)

        threading.Thread(target=run, daemon=True).start()
        return FakeActor._Ref(future)

    class _Ref:
        def __init__(self, future: Future[Any]) -> None:
            self._future = future

        def future(self) -> Future[Any]:
            return self._future


def convert(item: BatchItem, result: ItemResult) -> Any:
    return result.error if result.error is not None else result


@pytest.fixture
def actor(tmp_path):
    p = open_partition(tmp_path / "s")
    p.handle_batch([command(f"a{i}", "OpenAccount") for i in range(4)])
    yield FakeActor(p)
    p.close()


def channel(actor: FakeActor, **settings: Any) -> PartitionChannel:
    return PartitionChannel(0, actor, StoreConfig(**settings), convert, lambda n, ms: None, direct=False)


def test_a_lone_command_goes_at_once_and_a_crowd_shares_the_next_call(actor):
    ch = channel(actor)
    actor.hold.clear()
    [first] = ch.submit([command("a0")])
    crowd = [f for i in range(6) for f in ch.submit([command(f"a{i % 4}")])]  # while the first is in flight
    actor.hold.set()
    assert first.result(5).ok and all(f.result(5).ok for f in crowd)
    assert [len(b) for b in actor.batches] == [1, 6]
    assert ch.calls == 2 and actor.partition.stats()["durable_writes"] == 3  # the opening batch, then two
    ch.close(1)


def test_a_full_queue_refuses_with_overloaded_and_sends_nothing_of_it(actor):
    ch = channel(actor, max_pending=2, submit_timeout_s=0.1)
    actor.hold.clear()
    ch.submit([command("a0")])  # in flight
    ch.submit([command("a1"), command("a2")])  # queued: the queue is full
    with pytest.raises(Overloaded, match="max_pending=2"):
        ch.submit([command("a3")])
    actor.hold.set()
    ch.close(5)
    assert sorted(len(b) for b in actor.batches) == [1, 2]


def test_a_batch_whose_reply_was_lost_is_resent_and_answered_from_the_dedup_record(actor):
    ch = channel(actor, retry_deadline_s=10)
    actor.die_after_write = 1
    futures = ch.submit([command("a0", command_id="r-1"), command("a1", command_id="r-2")])
    results = [f.result(10) for f in futures]
    assert all(r.ok and r.duplicate for r in results)  # the first call made them durable
    assert [e.command_id for e in actor.batches[1]] == ["r-1", "r-2"]  # resent as-is
    assert actor.partition.get_state("BankAccount", "a0")[0] == 2  # applied once
    ch.close(1)


def test_close_fails_what_is_still_queued_with_store_closed(actor):
    ch = channel(actor)
    actor.hold.clear()
    [in_flight] = ch.submit([command("a0")])
    [queued] = ch.submit([command("a1")])
    threading.Timer(0.3, actor.hold.set).start()
    ch.close(0.05)  # the queued one is never sent
    with pytest.raises(StoreClosed):
        queued.result(5)
    assert in_flight.result(5).ok
    with pytest.raises(StoreClosed):
        ch.submit([command("a2")])
    time.sleep(0.1)
    assert [len(b) for b in actor.batches] == [1]
