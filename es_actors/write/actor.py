"""The Ray edge of the write path: one named actor per partition, hosting its aggregates.

Aggregates are virtual actors (ADR-006): each is owned by the partition actor its id
hashes to, which serializes its commands and owns its version. The actor restarts on
crash (``max_restarts=-1``) and rebuilds from the durable log in ``__init__``; calls are
never retried blindly (``max_task_retries=0``): clients resend by command id instead.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from typing import Any, Sequence

import ray
from ray.util import metrics

from es_actors.config import StoreConfig
from es_actors.write.direct_link import DirectServer
from es_actors.write.tls_link import ServerIdentity
from es_actors.domain import Aggregate, DomainRegistry
from es_actors.errors import CommandRejected, DomainError, EsActorsError, StorageError, StoreCorrupted
from es_actors.write.partition import Partition, safe_text
from es_actors.write.interceptors import CommandInterceptor
from es_actors.write.protocol import BatchItem, ItemResult, batch_from_wire, results_to_wire
from es_actors.storage.layout import StoreDescriptor, StoreLayout
from es_actors.runtime.cluster import actor_get, actor_start_failed, died_in_constructor, ensure_ray, store_actor_placement
from es_actors.runtime.naming import NAMESPACE, actor_name
from es_actors.runtime.process import run_at_normal_priority, tune_gc_for_a_long_lived_heap

_MS_BOUNDS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000]
_BATCH_BOUNDS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]


def portable_error(exc: BaseException) -> BaseException:
    """An error that survives plain pickling to the client, else a library error with its text.

    User errors may live in ``__main__`` or take constructor arguments pickle cannot replay;
    one such error must not break the reply of a whole batch.
    """
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
        return exc
    except BaseException:
        fallback = DomainError if isinstance(exc, DomainError) else CommandRejected
        return fallback(f"{type(exc).__name__}: {safe_text(exc)}")


class _WriteMetrics:
    """Write-path metrics, exported on the node's Prometheus endpoint (prefix ``ray_``)."""

    def __init__(self, partition: int) -> None:
        self.tags = {"partition": str(partition)}
        self.commands = metrics.Counter(
            "es_actors_commands", "Commands handled, by outcome.", tag_keys=("partition", "outcome")
        )
        self.events = metrics.Counter("es_actors_events", "Events appended to the log.", tag_keys=("partition",))
        self.rejections = metrics.Counter(
            "es_actors_rejections", "Rejected commands, by error kind.", tag_keys=("partition", "kind")
        )
        self.batch_size = metrics.Histogram(
            "es_actors_batch_size", "Commands per group commit.", boundaries=_BATCH_BOUNDS, tag_keys=("partition",)
        )
        self.commit_ms = metrics.Histogram(
            "es_actors_batch_ms", "Time to decide and durably commit a batch.", boundaries=_MS_BOUNDS,
            tag_keys=("partition",),
        )
        self.unsealed = metrics.Gauge("es_actors_unsealed_events", "Events in the tail, not yet sealed.", tag_keys=("partition",))
        self.aggregates = metrics.Gauge(
            "es_actors_aggregates", "Aggregates known to the partition, by memory state.", tag_keys=("partition", "state")
        )
        self.lifecycle = metrics.Gauge(
            "es_actors_lifecycle_total",
            "Hydrations, passivations, snapshots used/ignored/written and events replayed since the actor started.",
            tag_keys=("partition", "counter"),
        )

    def lifecycle_counts(self, p: Partition) -> None:
        self.aggregates.set(len(p.hydrated), {**self.tags, "state": "hydrated"})
        self.aggregates.set(len(p.aggregates) - len(p.hydrated), {**self.tags, "state": "passivated"})
        for name in ("hydrations", "passivations", "snapshot_used", "snapshot_ignored", "snapshots_written", "events_replayed"):
            self.lifecycle.set(p.counts[name], {**self.tags, "counter": name})

    def record(self, batch_len: int, results: list[ItemResult], elapsed_ms: float, unsealed: int) -> None:
        outcomes: dict[str, int] = {}
        kinds: dict[str, int] = {}
        events = 0
        for r in results:
            outcome = "err" if r.error is not None else "dup" if r.duplicate else "ok"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            events += len(r.rows) if outcome == "ok" else 0
            if r.error is not None:
                k = type(r.error).__name__
                kinds[k] = kinds.get(k, 0) + 1
        for outcome, n in outcomes.items():
            self.commands.inc(n, {**self.tags, "outcome": outcome})
        if events:
            self.events.inc(events, self.tags)
        for kind, n in kinds.items():
            self.rejections.inc(n, {**self.tags, "kind": kind})
        self.batch_size.observe(batch_len, self.tags)
        self.commit_ms.observe(elapsed_ms, self.tags)
        self.unsealed.set(unsealed, self.tags)


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class PartitionActor:
    def __init__(
        self, root: str, partition: int, aggregates: Sequence[type[Aggregate[Any]]], config: StoreConfig,
        opener: str = "", interceptors: Sequence[CommandInterceptor] = (),
    ) -> None:
        run_at_normal_priority(f"partition actor {partition}")  # before it starts any thread
        # Who created this actor: a Store whose open() passed this token started it (and stops it
        # on close); one that joined a running actor only detaches (Store.close, Store.shutdown).
        self._opener = opener
        self._error: EsActorsError | None = None
        self._partition: Partition | None = None
        try:
            self._partition = Partition(
                StoreLayout.from_uri(root), partition, DomainRegistry(aggregates), config, interceptors
            )
        except EsActorsError as exc:  # fenced or corrupt: answer every call with the reason, don't crash-loop
            self._error = exc
        except Exception as exc:  # e.g. an unreadable segment: same, with the cause named
            self._error = StoreCorrupted(f"partition {partition} cannot recover: {type(exc).__name__}: {exc}")
        self._metrics = _WriteMetrics(partition)
        self._batches = 0
        if self._partition is not None:
            self._metrics.lifecycle_counts(self._partition)
        tune_gc_for_a_long_lived_heap()
        # Ray calls run on the main thread, direct-link batches on server threads: one at a time.
        self._serial = threading.Lock()
        self._direct = DirectServer(self._handle_wire, f"p{partition}") if self._partition is not None else None
        self._remote: DirectServer | None = None  # the TLS link, opened when a client on another node asks
        self._config = config
        self._name = f"p{partition}"

    def _owned(self) -> Partition:
        if self._error is not None:
            raise self._error
        assert self._partition is not None
        return self._partition

    # Per-task events (the dashboard's task list) cost ~15-20% of a call's CPU on both sides;
    # the write path reports through its own metrics instead.
    @ray.method(enable_task_events=False)
    def handle_batch(self, batch: list[BatchItem]) -> list[ItemResult]:
        """The write path over Ray (clients on other nodes; the direct link is the fast path)."""
        return self._handle(batch)

    def _handle_wire(self, wire: list[Any]) -> list[tuple[Any, ...]]:
        """A batch over the direct link: in wire form both ways (es_actors.write.protocol)."""
        return results_to_wire(self._handle(batch_from_wire(wire)))

    def _handle(self, batch: list[BatchItem]) -> list[ItemResult]:
        with self._serial:
            p = self._owned()
            t0 = time.perf_counter()
            results = p.handle_batch(batch)
            for r in results:
                if r.error is not None:
                    r.error = portable_error(r.error)
            self._metrics.record(len(batch), results, (time.perf_counter() - t0) * 1000, p.log.unsealed_count)
            self._batches += 1
            if self._batches % 64 == 1:  # gauges: cheap enough now and then, not per batch
                self._metrics.lifecycle_counts(p)
            if p.log.failed is not None:
                self._restart_from_disk(p.log.failed)
            return results

    def _restart_from_disk(self, why: str) -> None:
        """After a failed fdatasync nothing in memory can be trusted to match the disk: stop
        taking commands, let this reply go out, then exit so Ray restarts the actor, which
        recovers from what is on disk (clients resend by command id)."""
        if self._error is None:
            self._error = StorageError(f"partition stopped after {why}; it restarts and recovers from disk")
            threading.Timer(0.3, os._exit, args=(70,)).start()
    def opened_by(self) -> str:
        """The token of the Store.open that created this actor (kept across restarts)."""
        return self._opener

    def endpoint(self, client_node: str | None = None) -> tuple[str, tuple[str, int] | None, bytes, bytes | None]:
        """(node id, address, key, certificate PEM) of the direct link for a client on ``client_node``.

        On this node (or not given): the loopback link, no certificate. On another node: the TLS
        link on this node's address, opened at the first such ask (so a single-machine Ray never
        listens beyond loopback), or no address when ``remote_link`` is off (use Ray calls).
        The key and certificate only ever travel in this Ray call."""
        self._owned()
        assert self._direct is not None
        node = ray.get_runtime_context().get_node_id()
        if client_node is None or client_node == node:
            return node, self._direct.address, self._direct.authkey, None
        if not self._config.remote_link:
            return node, None, b"", None
        if self._remote is None:
            host = ray.util.get_node_ip_address()
            self._remote = DirectServer(self._handle_wire, f"{self._name}-tls", host=host, tls=ServerIdentity())
        return node, self._remote.address, self._remote.authkey, self._remote.certificate()

    def get_state(self, aggregate_type: str, aggregate_id: str) -> tuple[int, Any]:
        with self._serial:
            return self._owned().get_state(aggregate_type, aggregate_id)

    def stats(self) -> dict[str, Any]:
        with self._serial:
            return {**self._owned().stats(), "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def seal(self) -> None:
        with self._serial:
            self._owned().seal()

    def passivate(self, aggregate_type: str | None = None, aggregate_id: str | None = None) -> int:
        with self._serial:
            key = (aggregate_type, aggregate_id) if aggregate_type is not None and aggregate_id is not None else None
            return self._owned().passivate(key)  # type: ignore[arg-type]

    def hydrate_all(self, limit: int | None = None) -> int:
        with self._serial:
            return self._owned().hydrate_all(limit)

    def flush_snapshots(self) -> int:
        with self._serial:
            return self._owned().flush_snapshots(force=True)

    def compact(self) -> dict[str, int]:
        """Merge runs of small sealed segments now: segments before and after, and how many merged.
        Not under the write lock: the log compacts beside appends, as its sealer does after a seal."""
        log = self._owned().log
        before = log.sealed_segment_count
        merged = log.compact()
        return {"segments_before": before, "segments_after": log.sealed_segment_count, "merged": merged}

    def close(self) -> None:
        """Seal the tail and let go of the partition (the lock), so another process may own it."""
        with self._serial:
            if self._direct is not None:
                self._direct.close()
                self._direct = None
            if self._remote is not None:
                self._remote.close()
                self._remote = None
            if self._partition is not None:
                self._partition.seal()
                self._partition.close()
                self._partition = None
                self._error = EsActorsError("this partition actor was closed")


def start_partition_actors(
    layout: StoreLayout,
    descriptor: StoreDescriptor,
    aggregates: Sequence[type[Aggregate[Any]]],
    config: StoreConfig,
    address: str | None,
    interceptors: Sequence[CommandInterceptor] = (),
) -> tuple[list[Any], list[bool]]:
    """The store's partition actors (joined where they already run), and for each whether this
    call created it (and so owns stopping it)."""
    ensure_ray(address)
    opener = os.urandom(12).hex()
    deadline = time.monotonic() + config.lock_timeout_s
    while True:
        actors = [
            PartitionActor.options(  # type: ignore[attr-defined]  # added by @ray.remote
                name=actor_name(layout, descriptor, p), namespace=NAMESPACE, get_if_exists=True,
                **store_actor_placement(layout.remote),
            ).remote(layout.uri, p, list(aggregates), config, opener, list(interceptors))
            for p in range(descriptor.partitions)
        ]
        try:
            actor_get([a.stats.remote() for a in actors])  # waits for recovery; surfaces WriterFenced
            created = [token == opener for token in actor_get([a.opened_by.remote() for a in actors])]
            return actors, created
        except EsActorsError:
            for a in actors:
                ray.kill(a, no_restart=True)
            raise
        except ray.exceptions.ActorDiedError as exc:
            # The store was closed a moment ago: we joined an actor that close() killed and whose
            # name Ray has not released yet. Ask again once it has. One whose constructor raised
            # keeps its name until killed, and would fail every later open the same way.
            if died_in_constructor(exc):
                for a in actors:
                    ray.kill(a, no_restart=True)
            if died_in_constructor(exc) or time.monotonic() >= deadline:
                raise actor_start_failed(f"the partition actors of {layout.root}", exc) from None
            time.sleep(0.1)
