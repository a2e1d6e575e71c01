"""When a partition snapshots an aggregate, and writing the snapshots.

A snapshot is due when the aggregate's ``snapshot_every`` events have passed since its last
one, or when hydration met a stale one (taken under other code, or not of this log). Due
snapshots are taken from published states only (after the batch that made them is durable),
and written in groups as immutable files (storage/local/snapshots.py): when enough wait, when they
waited long, or when forced (seal, close). Snapshots are an optimisation: a failure to encode
or write one is logged, never fails a batch; the log stays the truth.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from es_actors.codecs.state import SnapshotFormat
from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.storage.api import OwnedPartitionLog
from es_actors.storage.api import OwnerSnapshotStore
from es_actors.codecs.snapshot_rows import SnapshotRow
from es_actors.write.partition.index import AggregateEntry, Key

log = logging.getLogger(__name__)


class SnapshotPolicy:
    """The snapshots a partition owes, and writing them."""

    def __init__(
        self, partition: int, log: OwnedPartitionLog, registry: DomainRegistry, snapshot_format: SnapshotFormat,
        snapshots: OwnerSnapshotStore, config: StoreConfig, counts: dict[str, int], aggregates: dict[Key, AggregateEntry],
    ) -> None:
        self.partition = partition
        self.log = log
        self.registry = registry
        self.format = snapshot_format
        self.snapshots = snapshots
        self.config = config
        self.counts = counts
        self.aggregates = aggregates
        self.pending: dict[Key, tuple[int, int, Any, str | None]] = {}  # key -> (version, position, state, event id)
        self._pending_since = 0.0

    def note(self, key: Key, entry: AggregateEntry, event_id: str | None = None) -> None:
        """Take a snapshot of the entry's (published) state if one is due. ``event_id``: of the
        aggregate's last event, if known (else read when the snapshot is written)."""
        every = self.registry.aggregate(key[0]).snapshot_every
        due = entry.snap_version < 0 or (every is not None and entry.version - entry.snap_version >= every)
        if due and entry.version > 0:
            if not self.pending:
                self._pending_since = time.monotonic()
            self.pending[key] = (entry.version, entry.positions[-1], entry.state, event_id)
            entry.snap_version = entry.version

    def flush(self, force: bool = False) -> int:
        """Write pending snapshots as one file (when enough wait, or they waited long, or forced)."""
        pending = self.pending
        if not pending:
            return 0
        if not force and len(pending) < self.config.snapshot_flush_rows and (
            time.monotonic() - self._pending_since < self.config.snapshot_flush_s
        ):
            return 0
        self.pending = {}
        unknown = sorted(pos for (_v, pos, _s, eid) in pending.values() if eid is None)
        known_ids: dict[int, str] = {}
        if unknown:
            try:
                cols = self.log.read_at(unknown, ["position", "event_id"])
                known_ids = dict(zip(cols["position"], cols["event_id"]))
            except Exception as exc:  # those snapshots are skipped; replay stays correct
                log.warning("partition %d: reading event ids for snapshots failed: %s", self.partition, exc)
        rows = []
        for (atype, aid), (version, position, state, event_id) in pending.items():
            event_id = event_id or known_ids.get(position)
            if not event_id:
                continue
            codec = self.format.codec(atype)
            try:
                data = codec.encode(state)
            except Exception as exc:  # a state that cannot be encoded is never snapshotted: replay stays correct
                log.warning("%s/%s: state does not encode for a snapshot: %s", atype, aid, exc)
                continue
            fingerprint = self.format.fingerprint(atype)
            rows.append(SnapshotRow(atype, aid, version, position, fingerprint, codec.encoding, data, event_id))
        try:
            self.snapshots.write(rows)
        except Exception as exc:  # snapshots are an optimisation: the log stays the truth (never fail a batch)
            log.error("partition %d: writing snapshots failed: %s", self.partition, exc)
            return 0
        self.counts["snapshots_written"] += len(rows)
        try:
            if self.snapshots.file_count > self.config.snapshot_max_files:
                self.snapshots.consolidate(self.worth_keeping)
        except Exception as exc:
            log.error("partition %d: merging snapshot files failed: %s", self.partition, exc)
        return len(rows)

    def worth_keeping(self, row: SnapshotRow) -> bool:
        """Whether a consolidation keeps this row: the same rule as hydration's, the log's event
        id aside (hydration checks it when the row is used)."""
        entry = self.aggregates.get((row.aggregate_type, row.aggregate_id))
        return entry is not None and self.format.usable(row, entry.position_at(row.version))
