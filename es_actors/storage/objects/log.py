"""The owner's log of one partition on whole objects: claim, recover, commit, seal, compact.

Fencing without locks (ADR-014): an owner claims epoch ``highest + 1`` with put-if-absent,
then looks at the tail (giving an older owner's put in flight ``lock_timeout_s`` to finish),
adopts every whole commit, and puts a *start record* into the next free slot, naming the
last slot it adopts. Each group commit is a new object in the next slot, created with
put-if-absent; after the put, the owner acknowledges only if no later epoch was claimed. So
an older owner's next commit fails (its slot is taken by the start record) or is not
acknowledged (the claim exists), and everything it did acknowledge was whole before the
newer owner looked, which adopts it.

Sealing writes a segment object, then manifest ``gens/<n+1>`` (put-if-absent: the highest
whole one wins), then deletes the sealed tail objects except the newest (which keeps the
slot numbering visible to readers). Compaction writes a merged segment and a new manifest;
replaced segments are deleted after ``gc_grace_s``.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from es_actors.codecs.rows import COL, rows_to_table, table_to_rows
from es_actors.config import StoreConfig
from es_actors.errors import StorageError, StoreCorrupted, WriterFenced
from es_actors.storage.api import Appended, BlobStore, Row
from es_actors.storage.consistent import read_consistently
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.objects.records import (
    Commit,
    Manifest,
    SegmentRef,
    gen_key,
    key_number,
    numbered_keys,
    owner_key,
    partition_prefix,
    segment_key,
    slot_key,
)
from es_actors.storage.objects.view import (
    CommitCache,
    Listing,
    adopted_commits,
    current_manifest,
    look,
    parquet_bytes,
    read_segment,
    void_slots,
)

_CLAIM_ATTEMPTS = 20


class ObjectPartitionLog:
    """:class:`~es_actors.storage.api.PartitionLog` on a :class:`BlobStore` (one owner per epoch)."""

    def __init__(self, blobs: BlobStore, partition: int, config: StoreConfig) -> None:
        self.blobs, self.partition, self.config = blobs, partition, config
        self._cache = CommitCache()
        self._failed: str | None = None
        self._closed = False
        self._garbage: list[tuple[float, str]] = []  # (delete after, key)
        self.lost = LostRanges()  # repair (which records lost ranges) is local-only for now
        self.seal_error: str | None = None
        self.durable_writes = 0  # group commits acknowledged by this owner
        # Refuse damage before writing anything (a refused recovery leaves every byte as it was).
        read_consistently(lambda: adopted_commits(look(blobs, partition, self._cache), partition),
                          f"partition {partition}: recovery")
        self.epoch = self._claim()
        deadline = time.monotonic() + config.lock_timeout_s
        while True:  # until our start record lands in the slot after everything we adopt
            listing = self._look_settled(deadline)
            commits = adopted_commits(listing, partition)
            void = void_slots(listing)
            adopted_last = max([s for s, c in listing.slots.items() if c is not None and s not in void],
                               default=listing.manifest.through_slot)  # a torn newest slot is voided
            self.manifest = listing.manifest
            self._unsealed: list[Commit] = list(commits)
            self.next_position = commits[-1].last + 1 if commits else listing.manifest.last_position + 1
            slot = max(listing.slots, default=listing.manifest.through_slot) + 1
            if self._put_commit(Commit(slot, "start", self.epoch, self.next_position, (), adopted_last)):
                break  # every older owner's next commit now fails: its slot is taken
            self._check_not_fenced()  # an older owner's commit took the slot first: adopt it, try again
        self._slot = slot

    def _look_settled(self, deadline: float) -> Listing:
        """A look at the partition in which the newest slot is whole, or torn: an older owner's put
        in flight gets until ``deadline`` (``lock_timeout_s``) to finish, so what it may still
        acknowledge before it sees our claim is adopted, not voided."""
        while True:
            listing = read_consistently(lambda: look(self.blobs, self.partition, self._cache),
                                        f"partition {self.partition}: recovery")
            newest = max(listing.slots, default=0)
            if not newest or listing.slots[newest] is not None or time.monotonic() >= deadline:
                return listing
            time.sleep(0.01)

    # -- ownership ----------------------------------------------------------------------------

    def _claim(self) -> int:
        owners = numbered_keys(self.blobs, partition_prefix(self.partition) + "owners/")
        epoch = (key_number(owners[-1]) if owners else 0) + 1
        for _ in range(_CLAIM_ATTEMPTS):
            claim = json.dumps({"pid": os.getpid(), "at": time.time()}).encode()
            if self.blobs.put_if_absent(owner_key(self.partition, epoch), claim):
                return epoch
            epoch += 1
        raise WriterFenced(f"partition {self.partition}: could not claim ownership ({_CLAIM_ATTEMPTS} owners raced)")

    def _check_not_fenced(self) -> None:
        # Epochs are claimed as highest + 1 with put-if-absent, so they run without a gap: a newer
        # owner exists iff epoch + 1 does. One HEAD, however many owners came before (a LIST of
        # owners/ grew with every reopen: ~400 ms per commit after 2,000 claims on the local server).
        if self.blobs.exists(owner_key(self.partition, self.epoch + 1)):
            self._failed = f"fenced: a newer owner claimed partition {self.partition} after epoch {self.epoch}"
            raise WriterFenced(f"partition {self.partition}: another process took over this partition's log "
                               f"(epoch {self.epoch} is not the newest); this owner writes nothing more")

    def _put_commit(self, commit: Commit) -> bool:
        try:
            return self.blobs.put_if_absent(slot_key(self.partition, commit.slot), commit.encode())
        except OSError as exc:
            reason = "disk full" if exc.errno in (28, 122) else exc.strerror or str(exc)
            raise StorageError(f"durable write of {slot_key(self.partition, commit.slot)} failed ({reason}); "
                               "the batch was not acknowledged and the log is unchanged") from exc

    # -- the protocol -----------------------------------------------------------------------

    @property
    def failed(self) -> str | None:
        return self._failed

    def append(self, rows: Sequence[Row]) -> Appended:
        if self._failed is not None:
            raise WriterFenced(f"partition {self.partition}: {self._failed}; this owner writes nothing more")
        if rows[0][COL["position"]] != self.next_position:
            raise StoreCorrupted(f"append at {rows[0][COL['position']]} does not continue {self.next_position}")
        commit = Commit(self._slot + 1, "rows", self.epoch, self.next_position, tuple(tuple(r) for r in rows))
        if not self._put_commit(commit):
            self._check_not_fenced()  # raises: only a newer owner's start record takes our slot
            self._failed = f"slot {commit.slot} was taken by another writer"
            raise WriterFenced(f"partition {self.partition}: {self._failed}")
        try:
            self._check_not_fenced()  # a newer owner that looked before this put finished may void it
        except WriterFenced as exc:
            raise WriterFenced(f"{exc}. The batch was not acknowledged; it may still be in the log: resubmit "
                               "with the same command ids to learn it") from None
        self._slot = commit.slot
        self._unsealed.append(commit)
        self._cache.commits[commit.slot] = commit
        self.next_position = commit.last + 1
        self.durable_writes += 1
        if sum(len(c.rows) for c in self._unsealed) >= self.config.seal_rows:
            try:
                self.seal()
            except (StorageError, WriterFenced, OSError) as exc:  # the rows are durable and acknowledged:
                # sealing is upkeep, tried again after the next append (a fenced owner learns it then)
                self.seal_error = f"{type(exc).__name__}: {exc}"
        return Appended(commit.first, commit.last)

    def read_positions(self, first: int, last: int) -> list[Row]:
        out = [r for c in self._unsealed for r in c.rows if first <= r[COL["position"]] <= last]
        if len(out) == last - first + 1:
            return [tuple(r) for r in out]
        sealed: list[Row] = []
        for seg in self.manifest.segments:
            if seg.last >= first and seg.first <= last:
                sealed.extend(r for r in table_to_rows(read_segment(self.blobs, seg, self._cache))
                              if first <= r[COL["position"]] <= last)
        return sealed + [tuple(r) for r in out]

    # -- what the partition's owner reads (hydration, start-up index, stats) --------------------

    @property
    def unsealed_count(self) -> int:
        return sum(len(c.rows) for c in self._unsealed)

    @property
    def sealed_segment_count(self) -> int:
        return len(self.manifest.segments)

    def read_at(self, positions: "np.ndarray | Sequence[int]", columns: list[str]) -> dict[str, list[Any]]:
        """Selected columns of the rows at ``positions`` (ascending), in that order."""
        pos = [int(p) for p in np.asarray(positions, dtype=np.int64).tolist()]
        out: dict[str, list[Any]] = {c: [] for c in columns}
        if not pos:
            return out
        idx = [COL[c] for c in columns]
        mem_first = self._unsealed[0].first if self._unsealed else self.next_position
        mem = [r for c in self._unsealed for r in c.rows]
        segs = self.manifest.segments
        k = 0
        for p in pos:
            if p >= mem_first:
                row = mem[p - mem_first]
                for c, i in zip(columns, idx):
                    out[c].append(row[i])
                continue
            while segs[k].last < p:
                k += 1
            table = read_segment(self.blobs, segs[k], self._cache)
            at = p - segs[k].first
            for c in columns:
                out[c].append(table.column(c)[at].as_py())
        return out

    def index_columns(self) -> pa.Table:
        """(aggregate_type, aggregate_id, version, position) of every durable row, in position order."""
        cols = ["aggregate_type", "aggregate_id", "version", "position"]
        parts = [read_segment(self.blobs, s, self._cache).select(cols) for s in self.manifest.segments]
        tail = [r for c in self._unsealed for r in c.rows]
        if tail:
            parts.append(rows_to_table(tail).select(cols))
        if not parts:
            return rows_to_table([]).select(cols)
        return pa.concat_tables(parts)

    def seal_all(self) -> None:
        self.seal()

    # -- sealing (the protocol) ---------------------------------------------------------------

    def seal(self) -> None:
        """Write the unsealed commits as one segment and publish a manifest that holds it."""
        if not self._unsealed or self._failed is not None:
            return
        rows = [r for c in self._unsealed for r in c.rows]
        first, last = rows[0][COL["position"]], rows[-1][COL["position"]]
        self._publish(list(self.manifest.segments), [(first, last, rows_to_table(rows))], self._unsealed[-1].slot)
        self._unsealed = []
        self.seal_error = None
        self._delete_sealed_tail()
        self._collect_garbage()

    def compact(self) -> int:
        """Merge runs (>= compact_min_run) of small adjacent segments into one each."""
        if self._failed is not None:
            return 0
        small, min_run = self.config.compact_small_rows, self.config.compact_min_run
        runs: list[list[SegmentRef]] = []
        cur: list[SegmentRef] = []
        for s in self.manifest.segments:
            if s.last - s.first + 1 < small:
                cur.append(s)
                continue
            if len(cur) >= min_run:
                runs.append(cur)
            cur = []
        if len(cur) >= min_run:
            runs.append(cur)
        if not runs:
            return 0
        merged = {s.key for run in runs for s in run}
        keep = [s for s in self.manifest.segments if s.key not in merged]
        new = [(run[0].first, run[-1].last,
                pa.concat_tables([read_segment(self.blobs, s, self._cache) for s in run])) for run in runs]
        self._publish(keep, new, self.manifest.through_slot)
        self._garbage.extend((time.monotonic() + self.config.gc_grace_s, k) for k in merged)
        self._collect_garbage()
        return len(merged)

    def close(self) -> None:
        self._closed = True
        self._failed = self._failed or "closed"

    # -- sealing ------------------------------------------------------------------------------

    def _publish(self, keep: list[SegmentRef], new: list[tuple[int, int, pa.Table]], through_slot: int) -> None:
        self._check_not_fenced()
        _current, highest = current_manifest(self.blobs, self.partition)
        gen = max(highest, self.manifest.gen) + 1
        refs = list(keep)
        for first, last, table in new:
            data = parquet_bytes(table)
            key = segment_key(self.partition, gen, first, last)
            if not self.blobs.put_if_absent(key, data):
                raise StorageError(f"{key} exists: another writer sealed this partition")
            refs.append(SegmentRef(key, first, last, zlib.crc32(data)))
        refs.sort(key=lambda s: s.first)
        manifest = Manifest(gen, tuple(refs), through_slot, self.epoch)
        if not self.blobs.put_if_absent(gen_key(self.partition, gen), manifest.encode()):
            self._check_not_fenced()
            raise StorageError(f"{gen_key(self.partition, gen)} exists: a manifest was published meanwhile")
        replaced = [k for k in numbered_keys(self.blobs, partition_prefix(self.partition) + "gens/")
                    if key_number(k) < gen]
        self._garbage.extend((time.monotonic() + self.config.gc_grace_s, k) for k in replaced)
        self.manifest = manifest
        self._cache.trim(through_slot)

    def _delete_sealed_tail(self) -> None:
        keys = numbered_keys(self.blobs, partition_prefix(self.partition) + "tail/")
        newest = keys[-1] if keys else None
        for key in keys:
            if key != newest and key_number(key) <= self.manifest.through_slot:
                self.blobs.delete(key)

    def _collect_garbage(self) -> None:
        now = time.monotonic()
        due = [k for t, k in self._garbage if t <= now]
        self._garbage = [(t, k) for t, k in self._garbage if t > now]
        for key in due:
            self.blobs.delete(key)
