"""Explicit operator actions on a closed store: upgrade the format (:mod:`.upgrade`), repair damage
and accept a loss (:mod:`.repair`); this module holds what they share.

Each takes every partition's writer lock first (``WriterFenced`` if a writer runs), so it
never races a live owner; readers may keep reading throughout. Nothing here runs on its
own: a damaged store is refused until an operator asks for a repair (ADR-009).

- :func:`upgrade_store`: format 1 -> 2. Format-1 tail files are rewritten as format-2 files
  (temp, fsync, rename); segments get their CRC-32 in their names through a new generation
  (hard links, one ``current`` swap); ``store.json`` says 2 last, so a crash part-way leaves
  a store that is still format 1 and can be upgraded again.
- :func:`repair_store`: quarantines damaged bytes (copies into ``quarantine/<time>/``), keeps
  every valid frame and every readable row group, records what could not be kept in
  ``lost-ranges.json`` *before* rewriting anything, then rewrites the damaged files without
  the damage. Reports positions, aggregates and versions lost.
- :func:`accept_loss`: an operator's recorded decision that lets a partition take commands again.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from es_actors.errors import EsActorsError
from es_actors.storage.layout import StoreDescriptor, StoreLayout
from es_actors.storage.local.partition_log import acquire_partition_lock
from es_actors.storage.local.wal import Frame, encode_frame, file_header


def store_descriptor(layout: StoreLayout) -> StoreDescriptor:
    """The store's descriptor; a clear error if the directory is not a store."""
    desc = layout.read_descriptor()
    if desc is None:
        raise EsActorsError(f"{layout.root} is not an es_actors store (no store.json)")
    return desc


@contextmanager
def all_partitions_locked(layout: StoreLayout, partitions: int, timeout_s: float = 2.0) -> Iterator[None]:
    """Every partition's writer lock, so no live owner races the action (WriterFenced otherwise)."""
    fds: list[int] = []
    try:
        for p in range(partitions):
            fds.append(acquire_partition_lock(layout.tail_dir(p), timeout_s))
        yield
    finally:
        for fd in fds:
            os.close(fd)


def tail_file_bytes(first: int, frames: list[Frame]) -> bytes:
    """A whole format-2 tail file holding ``frames``."""
    return file_header(first) + b"".join(encode_frame(list(f.rows), f.first_position) for f in frames)
