"""Committing a decided batch: all its rows as one durable write (one frame, one fdatasync,
storage/local/partition_log.py), then, only once they are durable, the new states published and the
command ids remembered.

If the append fails, the batch's working copies are dropped: nothing was written and nothing
changed in memory. A disk error fails every accepted command of the batch (StorageError); a
row that passed every check yet cannot be encoded is found by deciding the batch again one
command at a time (the partition does that, on :data:`ONE_BY_ONE`).
"""

from __future__ import annotations

import logging
from enum import Enum

from es_actors.errors import EsActorsError, StorageError
from es_actors.storage.api import OwnedPartitionLog
from es_actors.write.partition.decide import BatchWork
from es_actors.write.partition.hydration import Hydration
from es_actors.write.partition.index import AggregateEntry, Key
from es_actors.write.partition.snapshot_policy import SnapshotPolicy

log = logging.getLogger(__name__)


class Outcome(Enum):
    WRITTEN = "written"  # the rows are durable (or there were none)
    REFUSED = "refused"  # the disk refused them: the accepted commands now carry the StorageError
    ONE_BY_ONE = "one-by-one"  # nothing written, a row cannot be encoded: decide again one at a time


def append(log_: OwnedPartitionLog, work: BatchWork, partition: int, rejections: dict[str, int]) -> tuple[Outcome, Exception | None]:
    """Append the batch's rows as one durable write."""
    if not work.rows:
        return Outcome.WRITTEN, None
    before = log_.next_position
    try:
        log_.append(work.rows)
    except StorageError as exc:
        for i in work.accepted + work.retried_in_batch:
            work.refuse(i, exc)
        rejections["StorageError"] = rejections.get("StorageError", 0) + len(work.accepted)
        return Outcome.REFUSED, exc
    except EsActorsError:
        raise
    except Exception as exc:
        if log_.next_position == before:
            # Nothing was written (the frame is built before any byte is). The rows passed every
            # check, yet one of them cannot be encoded.
            return Outcome.ONE_BY_ONE, exc
        log.error("partition %d: after a durable append: %s: %s", partition, type(exc).__name__, exc)
    return Outcome.WRITTEN, None


def publish(
    work: BatchWork, aggregates: dict[Key, AggregateEntry], hydration: Hydration, snapshots: SnapshotPolicy,
    dedup_window: int,
) -> None:
    """The batch is durable: its states become the aggregates' states, its command ids are
    remembered, and snapshots due are noted."""
    for key, (state, version) in work.working.items():
        entry = aggregates.get(key)
        if entry is None:
            entry = aggregates[key] = AggregateEntry()
            entry.commands = {}
        new_positions = work.entry_rows.get(key)
        if new_positions:
            entry.positions.extend(new_positions)
        entry.state, entry.version = state, version
        hydration.touch(key, entry)
        if entry.commands is not None:  # else loaded from the log (which now has these) when needed
            for cid, rec in work.new_ids.get(key, {}).items():
                entry.remember(cid, rec, dedup_window)
        snapshots.note(key, entry, work.last_event.get(key))
    hydration.passivate_over_limit()
    snapshots.flush()
