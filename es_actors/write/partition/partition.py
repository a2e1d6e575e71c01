"""One partition's write model: the aggregates it owns, decided and committed in groups.

This is the body of a partition actor, kept free of Ray so it can be tested and reasoned
about on its own (ADR-006, ADR-008). It coordinates the phases, each in its own module:
recovery builds the aggregate index (index.py); an aggregate hydrates when used
(hydration.py); a batch is handled in named steps (:meth:`Partition.handle_batch`):

1. for every command, in order: the command pipeline (interceptors.py: the envelope check,
   then the store's interceptors, duplicates included), the dedup record (dedup.py), the
   expected-version check, then ``decide`` against a working copy of its aggregate
   (decide.py); a refused command produces nothing;
2. append all accepted events as one durable write (commit.py);
3. only then publish the new states and remember the command ids (commit.py), note the
   snapshots due (snapshot_policy.py), and acknowledge.

If step 2 fails, the working copies are dropped: nothing was written and nothing changed.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from es_actors.codecs.rows import COL
from es_actors.codecs.state import SnapshotFormat
from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.domain.upcasting import UnreadableEvent
from es_actors.errors import (
    CommandIdReused,
    CommandRejected,
    ConcurrencyError,
    InvalidPayload,
    PartitionDamaged,
    StoreCorrupted,
    UserCodeError,
)
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.api import OwnedPartitionLog, OwnerSnapshotStore
from es_actors.storage.backends import open_owned_partition
from es_actors.write.interceptors import CommandInterceptor, CommandPipeline, InterceptContext, PriorCommand
from es_actors.write.partition import commit
from es_actors.write.partition.decide import BatchWork, decide, safe_text
from es_actors.write.partition.dedup import Remembered, command_digest, recent_commands, resolve_duplicates
from es_actors.write.partition.hydration import Hydration
from es_actors.write.partition.index import NOT_HYDRATED, AggregateEntry, Key, build_index
from es_actors.write.partition.snapshot_policy import SnapshotPolicy
from es_actors.write.protocol import BatchItem, BatchResults, ItemResult

import numpy as np

_EVENT_ID = COL["event_id"]  # a stored row's columns, by name (codecs.rows)


class Partition:
    """The aggregates of one partition: recovered from its log, commanded in batches."""

    def __init__(
        self, layout: StoreLayout, partition: int, registry: DomainRegistry, config: StoreConfig,
        interceptors: Sequence[CommandInterceptor] = (),
    ) -> None:
        self.partition = partition
        self.registry = registry
        self.config = config
        self.pipeline = CommandPipeline(config, interceptors)
        self._intercepting = bool(self.pipeline.interceptors)
        self.snapshot_format = SnapshotFormat(registry)
        self.root = layout.root
        self.log: OwnedPartitionLog
        self.snapshots: OwnerSnapshotStore
        self.log, self.snapshots = open_owned_partition(layout, partition, config)  # the store's URI chose the backend
        self.counts = {
            "accepted": 0, "duplicate": 0, "rejected": 0, "batches": 0, "hydrations": 0,
            "passivations": 0, "snapshot_used": 0, "snapshot_ignored": 0, "snapshots_written": 0,
            "events_replayed": 0,
        }
        self.rejections: dict[str, int] = {}
        self._damage_checked = 0.0
        self.aggregates: dict[Key, AggregateEntry] = {}
        self.frozen: set[Key] = set()  # aggregates known to have lost events
        self.hydration = Hydration(partition, self.log, registry, self.snapshot_format, self.snapshots, config, self.counts)
        self.hydrated = self.hydration.hydrated
        self.snapshot_policy = SnapshotPolicy(
            partition, self.log, registry, self.snapshot_format, self.snapshots, config, self.counts, self.aggregates
        )
        try:
            for r in self.log.lost.of(partition):
                self.frozen.update((a.aggregate_type, a.aggregate_id) for a in r.aggregates)
            t0 = time.perf_counter()
            aggregates, frozen = build_index(self.log, partition)
            self.aggregates.update(aggregates)
            self.frozen.update(frozen)
            self.recovery_s = time.perf_counter() - t0
        except BaseException:
            self.log.close()  # release the lock and stop the sealer: this owner will not run
            raise

    # -- the write path -------------------------------------------------------------------

    def handle_batch(self, batch: Sequence[BatchItem]) -> list[ItemResult]:
        """Decide, durably append and acknowledge a batch; each command gets its own result.

        One command's failure (a bad envelope, a refusal, any exception) is its result alone.
        """
        if not isinstance(batch, (list, tuple)):
            raise InvalidPayload(f"a batch must be a list of items, not {type(batch).__name__}")
        return self._handle(batch, None)

    def _handle(self, batch: Sequence[BatchItem], intercepted: list[BaseException | None] | None) -> list[ItemResult]:
        """``intercepted``: the interceptors' verdicts from a first run of these commands (a re-run
        one at a time does not run them again); None runs them."""
        self.counts["batches"] += 1
        work = BatchWork(self.log.next_position, time.time_ns() // 1000, [None] * len(batch))
        if intercepted is not None:
            work.intercepted = intercepted
        elif self._intercepting:
            work.intercepted = [None] * len(batch)
        for i, item in enumerate(batch):
            self._decide_one(work, i, item, run_interceptors=intercepted is None)
        outcome, exc = commit.append(self.log, work, self.partition, self.rejections)
        if outcome is commit.Outcome.ONE_BY_ONE:
            assert exc is not None
            return self._one_by_one(batch, exc, work.intercepted)
        if outcome is commit.Outcome.WRITTEN:
            commit.publish(work, self.aggregates, self.hydration, self.snapshot_policy, self.config.dedup_window)
            self.counts["accepted"] += len(work.accepted)
        return self._finish(work)

    def _decide_one(self, work: BatchWork, i: int, item: Any, run_interceptors: bool = True) -> None:
        """Step 1 for one command: the pipeline (envelope check, then the interceptors, before
        any log read), the dedup record, the version check, decide."""
        atype: Any = None
        try:
            env = self.pipeline.admit(item)  # the pipeline's step 1, before anything else
            atype, aid, cid = env.aggregate_type, env.aggregate_id, env.command_id
            agg_cls = self.registry.aggregate(atype)
            key = (atype, aid)
            entry = self.aggregates.get(key)
            if self._intercepting:  # the store's interceptors, duplicates included, each command once
                if run_interceptors:
                    self._intercept(work, i, env, key, entry)
                elif work.intercepted[i] is not None:
                    raise work.intercepted[i]  # type: ignore[misc]  # refused on the first run: the same verdict
            if self.frozen or self.log.lost:
                self._check_writable(key)
            if key in work.working:
                state, version = work.working[key]
            elif entry is not None:
                state, version = self._hydrated(key, entry), entry.version
            else:
                state, version = agg_cls.initial_state(), 0
            digest = command_digest(env)
            prior = self._prior(work, key, entry, cid)
            if prior is not None:
                if prior.digest != digest:
                    raise CommandIdReused(f"command id {cid!r} was already used on {atype}/{aid} for a different command")
                work.duplicate(i, prior)
                if cid in work.new_ids.get(key, ()):
                    work.retried_in_batch.append(i)
                return
            if env.expected_version is not None and env.expected_version != version:
                raise ConcurrencyError(f"{atype}/{aid}", env.expected_version, version)
            rows, state = decide(self.registry, self.config, self.partition, env, state, version, agg_cls, digest,
                                 work.next_position, work.now_us)
            # Accepted: its rows and state join the batch's working set (inline: this runs for
            # every command; its result is sent only once the rows are durable).
            n = len(rows)
            if n:
                work.rows.extend(rows)
                work.entry_rows.setdefault(key, []).extend(range(work.next_position, work.next_position + n))
                work.last_event[key] = rows[-1][_EVENT_ID]
                work.new_ids.setdefault(key, {})[cid] = Remembered(digest, version + n, work.next_position, n, env.principal)
                work.next_position += n
            work.working[key] = (state, version + n)
            work.accepted.append(i)
            work.results[i] = ItemResult(version + n, rows)
        except (CommandRejected, UnreadableEvent, StoreCorrupted) as exc:
            work.refuse(i, exc)
            self._count_rejection(type(exc).__name__)
        except BaseException as exc:  # a bug in user code (decide/evolve, even SystemExit), anything: this command only
            where = atype if isinstance(atype, str) else "?"
            work.refuse(i, UserCodeError(f"{type(exc).__name__} in {where[:200]}: {safe_text(exc)}"))
            self._count_rejection("UserCodeError")

    def _intercept(self, work: BatchWork, i: int, env: Any, key: Key, entry: Any) -> None:
        """The store's interceptors on one command, before any log read: the context's version
        comes from the index, ``duplicate_of`` from the dedup record only if an interceptor asks."""
        def prior() -> PriorCommand | None:
            found = self._prior(work, key, entry, env.command_id)
            return None if found is None else PriorCommand(found.principal, found.version)

        version = work.working[key][1] if key in work.working else (entry.version if entry is not None else 0)
        try:
            self.pipeline.intercept(env, InterceptContext(self.partition, version, find_prior=prior))
        except BaseException as exc:
            work.intercepted[i] = exc
            raise

    def _prior(self, work: BatchWork, key: Key, entry: Any, cid: str) -> Remembered | None:
        """The accepted command this id repeats, if any: from this batch, else the dedup record."""
        in_batch = work.new_ids.get(key)
        found = in_batch.get(cid) if in_batch else None
        if found is None and entry is not None:
            commands = entry.commands
            if commands is None:  # not loaded yet: read from the log once
                commands = recent_commands(self.log, entry, self.config.dedup_window)
            found = commands.get(cid)
        return found

    def _finish(self, work: BatchWork) -> list[ItemResult]:
        if work.duplicates:
            results, duplicates = resolve_duplicates(self.log, work.results)
            self.counts["duplicate"] += duplicates
        else:  # every result is final already
            results = BatchResults(work.results)
        self.counts["rejected"] += work.refusals
        return results

    def _one_by_one(
        self, batch: Sequence[BatchItem], exc: Exception, intercepted: list[BaseException | None]
    ) -> list[ItemResult]:
        """Nothing of the batch was written and one of its rows cannot be encoded: find its
        command by going one at a time, in order, so every other command is still decided."""
        if len(batch) == 1:
            err = InvalidPayload(f"the command's rows cannot be written to the log ({type(exc).__name__}: {exc}); nothing was written")
            self._count_rejection("InvalidPayload")
            self.counts["rejected"] += 1
            return BatchResults([ItemResult.refused(err)])
        self.counts["batches"] -= 1  # counted again per item
        verdicts = intercepted or [None] * len(batch)  # (no interceptors: no verdicts were kept)
        return BatchResults(self._handle([item], [verdict])[0] for item, verdict in zip(batch, verdicts))

    def _count_rejection(self, kind: str) -> None:
        self.rejections[kind] = self.rejections.get(kind, 0) + 1

    def _check_writable(self, key: Key) -> None:
        """Refuse commands while a recorded loss is unaccepted (any aggregate of this partition
        may have lost its newest events, and their versions must not be handed out again), and
        always for aggregates known to have lost events. An acceptance is seen within a second."""
        unresolved = self.log.lost.unresolved(self.partition)
        if unresolved and time.monotonic() - self._damage_checked > 1.0:
            self._damage_checked = time.monotonic()
            self.log.lost = LostRanges.load(self.root)  # an operator may have accepted it meanwhile
            unresolved = self.log.lost.unresolved(self.partition)
        atype, aid = key
        if unresolved:
            spans = ", ".join(f"{r.first}..{r.last}" for r in unresolved)
            raise PartitionDamaged(
                f"{atype}/{aid}: partition {self.partition} lost positions {spans} (recorded by a repair, "
                "not yet accepted); commands are refused until an operator accepts the loss with "
                "`es-actors repair --store PATH --accept --principal NAME --reason TEXT`; reads still work"
            )
        if key in self.frozen:
            entry = self.aggregates.get(key)
            raise PartitionDamaged(
                f"{atype}/{aid} lost events in a repaired partition {self.partition}; it is readable up to "
                f"version {entry.version if entry else 0} and refuses commands (see lost-ranges.json)"
            )

    # -- hydration ------------------------------------------------------------------------

    def _hydrated(self, key: Key, entry: AggregateEntry) -> Any:
        """The entry's state, hydrating it (newest usable snapshot + later events) if passivated."""
        if entry.state is NOT_HYDRATED:
            self.hydration.hydrate(key, entry)
            self.hydrated[key] = entry
            self.snapshot_policy.note(key, entry)  # a long replay (or a stale snapshot) earns a fresh one
        else:
            self.hydrated.move_to_end(key)
        return entry.state

    def hydrate_all(self, limit: int | None = None) -> int:
        """Hydrate the most recently written aggregates, up to ``limit`` (default ``max_hydrated``),
        in bulk (Hydration.hydrate_many)."""
        limit = self.config.max_hydrated if limit is None else min(limit, self.config.max_hydrated)
        if limit <= 0 or not self.aggregates:
            return 0
        last = np.fromiter((e.positions[-1] for e in self.aggregates.values()), dtype=np.int64, count=len(self.aggregates))
        keys_all = list(self.aggregates)
        chosen = [keys_all[i] for i in np.argsort(last, kind="stable")[-limit:].tolist()]
        todo = [k for k in chosen if self.aggregates[k].state is NOT_HYDRATED]
        self.hydration.hydrate_many(todo, self.aggregates)
        for k in todo:
            self.hydrated[k] = self.aggregates[k]
            self.snapshot_policy.note(k, self.aggregates[k])
        for k in chosen:
            self.hydrated.move_to_end(k)
        self.hydration.passivate_over_limit()
        return len(chosen)

    def passivate(self, key: Key | None = None) -> int:
        """Drop states from memory (one aggregate, or all); they rehydrate on next use."""
        return self.hydration.passivate(key)

    # -- reads and upkeep -----------------------------------------------------------------

    def get_state(self, aggregate_type: str, aggregate_id: str) -> tuple[int, Any]:
        agg_cls = self.registry.aggregate(aggregate_type)
        key = (aggregate_type, aggregate_id)
        entry = self.aggregates.get(key)
        if entry is None:
            return 0, agg_cls.initial_state()
        state = self._hydrated(key, entry)
        self.hydration.passivate_over_limit()
        return entry.version, state

    def flush_snapshots(self, force: bool = False) -> int:
        """Write pending snapshots as one file (when enough wait, or they waited long, or forced)."""
        return self.snapshot_policy.flush(force)

    def stats(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "next_position": self.log.next_position,
            "durable_writes": self.log.durable_writes,
            "unsealed_events": self.log.unsealed_count,
            "sealed_segments": self.log.sealed_segment_count,
            "aggregates": len(self.aggregates),
            "hydrated": len(self.hydrated),
            "recovery_s": self.recovery_s,
            "snapshot_files": self.snapshots.file_count,
            "seal_error": self.log.seal_error,
            "rejections": dict(self.rejections),
            **self.counts,
        }

    def seal(self) -> None:
        self.flush_snapshots(force=True)
        self.log.seal_all()

    def close(self) -> None:
        self.log.close()
