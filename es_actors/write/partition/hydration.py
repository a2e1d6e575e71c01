"""Hydration and passivation: an aggregate's state built when it is used, from its newest
usable snapshot plus the events after it (upcast on the way), through the one fold
(:func:`es_actors.domain.fold`); kept in an LRU of at most ``max_hydrated`` states, the least
recently used passivated (state and command ids dropped, index kept).

Bulk hydration (:meth:`Hydration.hydrate_many`) makes the same checks in fewer reads: every
snapshot row once, the event ids at the chosen snapshots in one pass, then the events after
them in position order, in chunks.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass
from collections import OrderedDict
from typing import Any, Iterable, Iterator

import numpy as np

from es_actors.codecs.rows import event_where
from es_actors.codecs.state import SnapshotFormat
from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry, Event
from es_actors.domain.fold import fold
from es_actors.errors import StoreCorrupted
from es_actors.storage.api import OwnedPartitionLog
from es_actors.storage.api import OwnerSnapshotStore
from es_actors.codecs.snapshot_rows import SnapshotRow
from es_actors.write.partition.index import NOT_HYDRATED, AggregateEntry, Key

log = logging.getLogger(__name__)

_REPLAY_COLUMNS = ["position", "version", "event_type", "schema_version", "payload"]
_CHUNK = 100_000  # events read at once by bulk hydration


@dataclass(slots=True)
class _Replay:
    """One aggregate being rebuilt by bulk hydration."""

    state: Any
    version: int  # of the last event folded in


class Hydration:
    """The hydrated states of one partition (an LRU over the index's entries)."""

    def __init__(
        self, partition: int, log: OwnedPartitionLog, registry: DomainRegistry, snapshot_format: SnapshotFormat,
        snapshots: OwnerSnapshotStore, config: StoreConfig, counts: dict[str, int],
    ) -> None:
        self.partition = partition
        self.log = log
        self.registry = registry
        self.format = snapshot_format
        self.snapshots = snapshots
        self.config = config
        self.counts = counts
        self.hydrated: OrderedDict[Key, AggregateEntry] = OrderedDict()

    # -- the LRU -----------------------------------------------------------------------------

    def touch(self, key: Key, entry: AggregateEntry) -> None:
        """Mark the entry most recently used (adding it to the hydrated set)."""
        self.hydrated[key] = entry
        self.hydrated.move_to_end(key)

    def passivate_over_limit(self) -> None:
        while len(self.hydrated) > self.config.max_hydrated:
            _key, entry = self.hydrated.popitem(last=False)
            entry.passivate()
            self.counts["passivations"] += 1

    def passivate(self, key: Key | None = None) -> int:
        """Drop states from memory (one aggregate, or all); they rehydrate on next use."""
        keys = [key] if key is not None else list(self.hydrated)
        n = 0
        for k in keys:
            entry = self.hydrated.pop(k, None)
            if entry is not None:
                entry.passivate()
                n += 1
        self.counts["passivations"] += n
        return n

    # -- one aggregate ---------------------------------------------------------------------

    def hydrate(self, key: Key, entry: AggregateEntry) -> None:
        """Build the entry's state: newest usable snapshot, then the events after it."""
        atype, aid = key
        agg_cls = self.registry.aggregate(atype)
        state, at = agg_cls.initial_state(), 0
        snap = self._best_snapshot(key, entry)
        if snap is not None:
            state, at = snap
            self.counts["snapshot_used"] += 1
            entry.snap_version = max(entry.snap_version, at)
        # else keep snap_version: -1 (a stale snapshot was met) makes a replacement due after the replay
        if at < entry.version:
            cols = self.log.read_at(entry.positions[at:], _REPLAY_COLUMNS)
            rows = zip(*(cols[c] for c in _REPLAY_COLUMNS))
            state = fold(agg_cls, self._events(atype, aid, at, rows), state)
        self.counts["events_replayed"] += entry.version - at
        entry.state = state
        self.counts["hydrations"] += 1

    def _events(self, atype: str, aid: str, at: int, rows: Iterable[tuple[Any, ...]]) -> Iterator[Event]:
        """The stored rows of one aggregate as events (upcast), checking each version follows ``at``."""
        decode, partition = self.registry.decode, self.partition
        for pos, version, etype, sv, payload in rows:
            if version != at + 1:
                raise StoreCorrupted(f"{atype}/{aid}: version {version} follows {at} at position {pos}")
            yield from decode(etype, sv, payload, lambda: event_where(partition, pos, atype, aid, version))
            at = version

    def _best_snapshot(self, key: Key, entry: AggregateEntry) -> tuple[Any, int] | None:
        """The newest snapshot that may be used (SnapshotFormat.usable), decoded, or None."""
        if entry.version == 0:
            return None
        codec = self.format.codec(key[0])
        ignored = False
        for row in sorted(self.snapshots.candidates(*key), key=lambda r: -r.version):
            position = entry.position_at(row.version)
            if self.format.usable(row, position) and (  # the log's event id is read only when all else holds
                not row.event_id or self.format.usable(row, position, self._event_id_at(entry, row.version))
            ):
                try:
                    return codec.decode(row.state, row.encoding), row.version
                except Exception as exc:
                    log.warning("%s/%s: snapshot at version %d does not decode, ignored: %s", *key, row.version, exc)
            ignored = True
        if ignored:  # taken under other code (or damaged): replace it once rehydrated by replay
            self.counts["snapshot_ignored"] += 1
            entry.snap_version = -1
        return None

    def _event_id_at(self, entry: AggregateEntry, version: int) -> str | None:
        """Id of the aggregate's event at ``version`` in this log (read once, then remembered:
        the owner's log does not change under it); None if it cannot be read."""
        if entry.snap_event is None or entry.snap_event[0] != version:
            try:
                ids = self.log.read_at([entry.positions[version - 1]], ["event_id"])["event_id"]
            except Exception as exc:  # cannot show the snapshot matches the log: not used
                log.warning("partition %d: reading an event id failed: %s", self.partition, exc)
                return None
            entry.snap_event = (version, ids[0])
        return entry.snap_event[1]

    # -- many aggregates at once -------------------------------------------------------------

    def hydrate_many(self, todo: list[Key], aggregates: dict[Key, AggregateEntry]) -> tuple[set[Key], set[Key]]:
        """Build the states of ``todo`` (passivated entries) in bulk. Returns (keys whose snapshot
        was used, keys that met a stale snapshot)."""
        best, stale = self._best_snapshots(todo, aggregates)
        used: set[Key] = set()
        slots: dict[Key, _Replay] = {}
        initial: dict[str, Any] = {}  # states are immutable (evolve returns a new one): one start per type
        for k in todo:
            if k[0] not in initial:
                initial[k[0]] = self.registry.aggregate(k[0]).initial_state()
            state, at = initial[k[0]], 0
            row = best.get(k)
            if row is not None:
                try:
                    state, at = self.format.codec(k[0]).decode(row.state, row.encoding), row.version
                    self.counts["snapshot_used"] += 1
                    used.add(k)
                except Exception as exc:
                    stale.add(k)
                    log.warning("%s/%s: snapshot at version %d does not decode, ignored: %s", *k, row.version, exc)
            slots[k] = _Replay(state, at)
        needed = array("q")
        for k in todo:
            at = slots[k].version
            needed.extend(aggregates[k].positions[at:] if at else aggregates[k].positions)
        positions = np.sort(np.frombuffer(needed, dtype=np.int64)) if needed else np.empty(0, np.int64)
        cols = ["aggregate_type", "aggregate_id", *_REPLAY_COLUMNS]
        classes: dict[str, Any] = {}
        for start in range(0, len(positions), _CHUNK):
            chunk = self.log.read_at(positions[start : start + _CHUNK], cols)
            per_key: dict[Key, list[tuple[Any, ...]]] = {}  # this chunk's rows by aggregate, in position order
            replay = zip(*(chunk[c] for c in _REPLAY_COLUMNS))
            for atype, aid, stored in zip(chunk["aggregate_type"], chunk["aggregate_id"], replay):
                per_key.setdefault((atype, aid), []).append(stored)
            for (atype, aid), rows in per_key.items():
                slot = slots[(atype, aid)]
                agg_cls = classes.get(atype) or classes.setdefault(atype, self.registry.aggregate(atype))
                slot.state = fold(agg_cls, self._events(atype, aid, slot.version, rows), slot.state)
                slot.version += len(rows)
        self.counts["events_replayed"] += len(positions)
        for k in todo:
            entry = aggregates[k]
            entry.state = slots[k].state
            if k in used:
                entry.snap_version = max(entry.snap_version, best[k].version)
            elif k in stale:  # taken under other code, or not of this log: replace it
                self.counts["snapshot_ignored"] += 1
                entry.snap_version = -1
        self.counts["hydrations"] += len(todo)
        return used, stale

    def _best_snapshots(
        self, todo: list[Key], aggregates: dict[Key, AggregateEntry]
    ) -> tuple[dict[Key, SnapshotRow], set[Key]]:
        """The newest usable snapshot of each of ``todo`` (every snapshot row read once, the log's
        event ids at them read in one pass), and the keys that met a stale one."""
        best: dict[Key, SnapshotRow] = {}
        stale: set[Key] = set()
        wanted = set(todo)
        for row in self.snapshots.all_rows():
            k = (row.aggregate_type, row.aggregate_id)
            if k not in wanted:
                continue
            if not self.format.usable(row, aggregates[k].position_at(row.version)):
                stale.add(k)
            elif k not in best or best[k].version < row.version:
                best[k] = row
        check = sorted((aggregates[k].positions[r.version - 1], k) for k, r in best.items() if r.event_id)
        if check:
            try:
                ids = self.log.read_at([pos for pos, _k in check], ["event_id"])["event_id"]
            except Exception as exc:
                log.warning("partition %d: reading event ids failed, snapshots not used: %s", self.partition, exc)
                ids = [None] * len(check)
            for (pos, k), eid in zip(check, ids):
                if eid is not None:
                    aggregates[k].snap_event = (best[k].version, eid)
                if not self.format.usable(best[k], pos, eid):
                    stale.add(k)
                    del best[k]
        return best, stale


def is_hydrated(entry: AggregateEntry) -> bool:
    return entry.state is not NOT_HYDRATED
