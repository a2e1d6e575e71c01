"""Slicing a follower's batch by position: how a failing batch is bisected to the events
that fail (to park them, or to name the one a halted projection fails on)."""

from __future__ import annotations

import pyarrow.compute as pc

from es_actors.storage.local.follower import Batch


def bisect_batch(batch: Batch, first: int, last: int) -> Batch:
    """Positions first..last of a batch (same source: tail rows or sealed files)."""
    if batch.table is not None:
        pos = batch.table.column("position")
        t = batch.table.filter(pc.and_(pc.greater_equal(pos, first), pc.less_equal(pos, last)))
        return Batch(batch.partition, first, last, table=t)
    return Batch(batch.partition, first, last, files=list(batch.files))
