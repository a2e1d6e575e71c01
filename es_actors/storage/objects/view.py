"""One look at a partition of the whole-object backend, and what of it is durable and visible.

Shared by the owner's recovery, readers and followers, so all apply the same rules:

- the current manifest is the highest whole ``gens/`` object; tail slots at or before its
  ``through_slot`` are sealed (and may already be deleted);
- slots after it must be numbered without a gap (a gap means a seal deleted slots after we
  read the manifest: :class:`Moved`, look again);
- a start record voids the slots between the slot its owner adopted last and itself;
- a slot that is not whole is in flight or torn when it is the newest; before the newest,
  and not void, it is damage (:class:`StoreCorrupted`);
- a whole commit counts: a new owner adopts every commit that is whole when it looks (it
  waits ``lock_timeout_s`` for one still being written), so a reader never shows a commit
  that is later voided (unless an old owner's put stalls longer than that; it then learns
  it was fenced and does not acknowledge it).
"""

from __future__ import annotations

import zlib
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.errors import StoreCorrupted
from es_actors.storage.api import BlobStore, ObjectIncomplete
from es_actors.storage.consistent import Moved
from es_actors.storage.objects.records import (
    Commit,
    Incomplete,
    Listing,
    Manifest,
    SegmentRef,
    key_number,
    partition_prefix,
    slot_key,
)


class CommitCache:
    """Whole tail objects and segments never change: read each once per process object."""

    def __init__(self) -> None:
        self.commits: dict[int, Commit] = {}
        self.tables: dict[str, pa.Table] = {}

    def trim(self, through_slot: int) -> None:
        for s in [s for s in self.commits if s <= through_slot]:
            del self.commits[s]
        if len(self.tables) > 64:
            self.tables.clear()


def current_manifest(blobs: BlobStore, partition: int) -> tuple[Manifest, int]:
    """(the highest whole manifest, the highest manifest number listed, whole or not)."""
    keys = blobs.list(partition_prefix(partition) + "gens/")
    for key in reversed(keys):
        try:
            return Manifest.decode(blobs.get(key)), key_number(keys[-1])
        except (Incomplete, ObjectIncomplete, FileNotFoundError):
            continue
    return Manifest(), key_number(keys[-1]) if keys else 0


def look(blobs: BlobStore, partition: int, cache: CommitCache) -> Listing:
    """The current manifest, then the tail slots after it (a seal between the two shows as a gap)."""
    manifest, highest_gen = current_manifest(blobs, partition)
    listing = Listing(manifest, highest_gen)
    for key in blobs.list(partition_prefix(partition) + "tail/"):
        slot = key_number(key)
        if slot <= manifest.through_slot:
            continue
        commit = cache.commits.get(slot)
        if commit is None:
            try:
                commit = Commit.decode(blobs.get(key))  # FileNotFoundError: a seal deleted it: look again
            except (Incomplete, ObjectIncomplete):
                commit = None
            else:
                cache.commits[slot] = commit
        listing.slots[slot] = commit
    expected = manifest.through_slot + 1
    for slot in sorted(listing.slots):
        if slot != expected:
            raise Moved(f"partition {partition}: tail slot {slot} where {expected} was expected (a seal moved them)")
        expected += 1
    return listing


def void_slots(listing: Listing) -> set[int]:
    void: set[int] = set()
    for slot, c in listing.slots.items():
        if c is not None and c.kind == "start":
            void.update(range(c.after_slot + 1, slot))
    return void


def adopted_commits(listing: Listing, partition: int) -> list[Commit]:
    """The row commits after the manifest that count, in order; damage raises StoreCorrupted."""
    void = void_slots(listing)
    newest = max(listing.slots, default=0)
    expected = listing.manifest.last_position + 1
    out: list[Commit] = []
    for slot in sorted(listing.slots):
        c = listing.slots[slot]
        if slot in void:
            continue
        if c is None:
            if slot == newest:
                break  # being written, or torn by a crash: it holds nothing yet
            raise StoreCorrupted(
                f"{slot_key(partition, slot)} is not whole (damaged) but later commits follow it; nothing was "
                "changed. Restore it from a copy, or remove it and record the lost positions"
            )
        if c.first != expected:
            raise StoreCorrupted(f"{slot_key(partition, slot)} starts at position {c.first} where {expected} was expected")
        if c.kind == "rows":
            out.append(c)
            expected = c.last + 1
    return out


def read_segment(blobs: BlobStore, seg: SegmentRef, cache: CommitCache) -> pa.Table:
    """A sealed segment's rows, its CRC-32 checked; FileNotFoundError if compaction collected it."""
    table = cache.tables.get(seg.key)
    if table is None:
        try:
            data = blobs.get(seg.key)
        except ObjectIncomplete:
            raise StoreCorrupted(f"{seg.key}: a sealed segment named by a manifest is not whole; nothing was changed") from None
        if zlib.crc32(data) != seg.crc:
            raise StoreCorrupted(
                f"{seg.key}: sealed segment is damaged (CRC-32 {zlib.crc32(data):08x}, the manifest says "
                f"{seg.crc:08x}); positions {seg.first}..{seg.last} cannot be trusted. Nothing was changed"
            )
        try:
            table = pq.read_table(pa.BufferReader(data), schema=ARROW_SCHEMA)
        except pa.ArrowException as exc:
            raise StoreCorrupted(f"{seg.key}: sealed segment cannot be read: {exc}") from None
        cache.tables[seg.key] = table
    return table


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_page_checksum=True)
    return bytes(sink.getvalue().to_pybytes())


def rows_after(commits: list[Commit]) -> list[tuple[Any, ...]]:
    return [r for c in commits for r in c.rows]
