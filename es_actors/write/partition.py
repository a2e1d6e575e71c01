"""One partition's write model: the aggregates it owns, decided and committed in groups.

This is the body of a partition actor, kept free of Ray so it can be tested and reasoned
about on its own (ADR-006, ADR-008).

Start-up reads four columns of the log (type, id, version, position) into an index of
every aggregate: its version and the positions of its events. No payload is decoded and
no state is built until an aggregate is used; then it hydrates from its newest valid
snapshot plus the events after it (upcast on the way), and joins an LRU of at most
``max_hydrated`` states; the least recently used are passivated (state and command ids
dropped, index kept). A batch is handled in three steps:

1. decide every command in order against a working copy of its aggregate (idempotency
   and expected-version checks first; a rejected command produces nothing);
2. append all accepted events as one durable write (one frame, one fdatasync);
3. only then publish the new states and remember the command ids, and acknowledge.

If step 2 fails, the working copies are dropped: nothing was written and nothing changed.
Snapshots due under the aggregate's ``snapshot_every`` policy are taken from published
states only, and written in groups as immutable files (storage/snapshots.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from es_actors.config import StoreConfig
from es_actors.codecs.state import SnapshotFormat
from es_actors.domain import DomainRegistry, Event
from es_actors.errors import (
    CommandIdReused,
    CommandRejected,
    UserCodeError,
    ConcurrencyError,
    EsActorsError,
    InvalidPayload,
    PartitionDamaged,
    PayloadTooLarge,
    StorageError,
    StoreCorrupted,
)
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from es_actors.write.envelope import BatchItem, utf8_size, validate_envelope
from es_actors.codecs.rows import COL, event_where
from es_actors.domain.upcasting import UnreadableEvent
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.backends import open_owned_partition
from es_actors.storage.snapshots import SnapshotRow

log = logging.getLogger(__name__)

Row = tuple[Any, ...]

# A batch item (es_actors/write/envelope.py says what each field may hold).
# A result: ("ok", version, rows) | ("dup", version, rows) | ("err", exception)
ItemResult = tuple[Any, ...]


@dataclass(slots=True)
class Remembered:
    """What an accepted command did, kept so its retry returns the same result."""

    digest: str
    version: int
    first_position: int
    count: int


_NOT_HYDRATED: Any = object()


class AggregateEntry:
    """Every aggregate the partition knows: its version and event positions always; its state
    and recent command ids only while hydrated (at most ``max_hydrated`` of them)."""

    __slots__ = ("version", "positions", "state", "commands", "snap_version", "snap_event")

    def __init__(self, version: int = 0, positions: "array[int] | None" = None) -> None:
        self.version = version
        self.positions: array[int] = positions if positions is not None else array("q")
        self.state: Any = _NOT_HYDRATED
        self.commands: dict[str, Remembered] | None = None  # None: not loaded (lazily, from the log)
        self.snap_version = 0  # version of the newest snapshot known to exist (-1: a stale one, replace it)
        self.snap_event: tuple[int, str] | None = None  # (version, id of the log's event there), once read

    def remember(self, command_id: str, rec: Remembered, window: int) -> None:
        assert self.commands is not None
        self.commands.pop(command_id, None)
        self.commands[command_id] = rec
        if len(self.commands) > window:
            del self.commands[next(iter(self.commands))]


def command_digest(kind: str, body: Any) -> str:
    """Fingerprint of what a command asks, to tell a retry from a reused id.

    Payloads arrive as the JSON pydantic serialized them (fields in declaration order), so
    the same command always hashes the same without re-encoding it here.
    """
    text = f"{body[0]}\x00{body[1]}" if kind == "command" else json.dumps(body)
    return hashlib.blake2b(f"{kind}\x00{text}".encode(), digest_size=12).hexdigest()


def names_of(encoded: Any, code: int) -> str:
    return str(encoded.dictionary[int(code)].as_py()).replace("\x00", "/")


class Partition:
    def __init__(self, layout: StoreLayout, partition: int, registry: DomainRegistry, config: StoreConfig) -> None:
        self.partition = partition
        self.registry = registry
        self.snapshot_format = SnapshotFormat(registry)
        self.config = config
        self.log, self.snapshots = open_owned_partition(layout, partition, config)  # the URI chose the backend
        self.aggregates: dict[tuple[str, str], AggregateEntry] = {}
        self.hydrated: OrderedDict[tuple[str, str], AggregateEntry] = OrderedDict()
        self._snap_pending: dict[tuple[str, str], tuple[int, int, Any, str | None]] = {}
        self._snap_pending_since = 0.0
        self.counts = {
            "accepted": 0, "duplicate": 0, "rejected": 0, "batches": 0, "hydrations": 0,
            "passivations": 0, "snapshot_used": 0, "snapshot_ignored": 0, "snapshots_written": 0,
            "events_replayed": 0,
        }
        self.rejections: dict[str, int] = {}
        self.root = layout.root
        self.frozen: set[tuple[str, str]] = set()  # aggregates known to have lost events
        self._damage_checked = 0.0
        try:
            for r in self.log.lost.of(partition):
                self.frozen.update((a.aggregate_type, a.aggregate_id) for a in r.aggregates)
            t0 = time.perf_counter()
            self._build_index()
            self.recovery_s = time.perf_counter() - t0
        except BaseException:
            self.log.close()  # release the lock and stop the sealer: this owner will not run
            raise

    # -- start-up: an index of every aggregate, no state yet -------------------------------

    def _build_index(self) -> None:
        """Version and event positions of every aggregate, from four columns of the log.

        Checks what the log promises (positions gapless, each aggregate's versions 1..n in
        position order) without decoding a payload; states hydrate on first use.
        """
        table = self.log.index_columns()
        n = table.num_rows
        if n == 0:
            return
        positions = table.column("position").to_numpy()
        steps = np.diff(np.concatenate([[0], positions]))
        for bad in np.flatnonzero(steps != 1).tolist():  # only across a loss a repair recorded
            before = int(positions[bad - 1]) if bad else 0
            if not (steps[bad] > 1 and self.log.lost.covers(self.partition, before + 1, int(positions[bad]) - 1)):
                raise StoreCorrupted(f"partition {self.partition}: position {positions[bad]} follows {before}")
        keys = pc.binary_join_element_wise(table.column("aggregate_type"), table.column("aggregate_id"), "\x00")
        encoded = pc.dictionary_encode(keys).combine_chunks()
        codes = encoded.indices.to_numpy()
        order = np.argsort(codes, kind="stable")  # by aggregate, position order within each
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_codes[1:] != sorted_codes[:-1]]))
        group = np.cumsum(np.concatenate([[1], (sorted_codes[1:] != sorted_codes[:-1]).astype(np.int64)])) - 1
        versions = table.column("version").to_numpy()[order]
        expected = np.arange(n) - starts[group] + 1
        cut: dict[int, int] = {}  # group -> where its versions first skip (lost events)
        if not np.array_equal(versions, expected):
            for i in np.flatnonzero(versions != expected).tolist():
                if not self.log.lost.of(self.partition):
                    raise StoreCorrupted(
                        f"partition {self.partition}: {names_of(encoded, sorted_codes[i])}: version {versions[i]} "
                        f"follows {expected[i] - 1} at position {positions[order[i]]}"
                    )
                cut.setdefault(int(group[i]), i)
        sorted_pos = positions[order].astype(np.int64)
        ends = np.concatenate([starts[1:], [n]])
        names = encoded.dictionary.to_pylist()
        for g, (code, a, b) in enumerate(zip(sorted_codes[starts].tolist(), starts.tolist(), ends.tolist())):
            atype, aid = names[code].split("\x00", 1)
            atype = sys.intern(atype)  # one string per type, not one per aggregate
            if g in cut:  # readable up to the gap; commands refused (PartitionDamaged)
                b = cut[g]
                self.frozen.add((atype, aid))
            self.aggregates[(atype, aid)] = AggregateEntry(b - a, array("q", sorted_pos[a:b].tobytes()))
        del table, keys, encoded, codes, order, sorted_codes, group, versions, expected, sorted_pos, names
        pa.default_memory_pool().release_unused()  # the Arrow buffers of the scan: back to the OS

    # -- hydration and passivation ---------------------------------------------------------

    def _hydrated(self, key: tuple[str, str], entry: AggregateEntry) -> Any:
        """The entry's state, hydrating it (newest valid snapshot + later events) if passivated."""
        if entry.state is _NOT_HYDRATED:
            self._hydrate(key, entry)
            self.hydrated[key] = entry
            self._note_for_snapshot(key, entry)  # a long replay (or a stale snapshot) earns a fresh one
        else:
            self.hydrated.move_to_end(key)
        return entry.state

    def _hydrate(self, key: tuple[str, str], entry: AggregateEntry) -> None:
        atype, aid = key
        agg_cls = self.registry.aggregate(atype)
        state, at = agg_cls.initial_state(), 0
        snap = self._best_snapshot(key, entry)
        if snap is not None:
            state, at = snap
            self.counts["snapshot_used"] += 1
            entry.snap_version = max(entry.snap_version, at)
        # else keep snap_version: -1 (a stale snapshot was met) makes a replacement due after the replay
        replayed_from = at
        if at < entry.version:
            cols = self.log.read_at(entry.positions[at:], ["position", "version", "event_type", "schema_version", "payload"])
            for pos, version, etype, sv, payload in zip(
                cols["position"], cols["version"], cols["event_type"], cols["schema_version"], cols["payload"]
            ):
                if version != at + 1:
                    raise StoreCorrupted(f"{atype}/{aid}: version {version} follows {at} at position {pos}")
                for event in self._decode(etype, sv, payload, pos, atype, aid, version):
                    state = agg_cls.evolve(state, event)
                at = version
        self.counts["events_replayed"] += entry.version - replayed_from
        entry.state = state
        self.counts["hydrations"] += 1

    def _decode(self, etype: str, sv: int, payload: str, pos: int, atype: str, aid: str, version: int) -> Any:
        """registry.decode, naming the event (text built only if there is an error)."""
        return self.registry.decode(etype, sv, payload, lambda: event_where(self.partition, pos, atype, aid, version))

    def _best_snapshot(self, key: tuple[str, str], entry: AggregateEntry) -> tuple[Any, int] | None:
        """The newest snapshot that is safe to use, or None. Never a stale one:
        its fingerprint must match this code, and the log must hold its event at its position."""
        if entry.version == 0:
            return None
        fingerprint = self.snapshot_format.fingerprint(key[0])
        codec = self.snapshot_format.codec(key[0])
        ignored = False
        for row in sorted(self.snapshots.candidates(*key), key=lambda r: -r.version):
            ok = (
                row.fingerprint == fingerprint
                and 1 <= row.version <= entry.version
                and entry.positions[row.version - 1] == row.position
                and (not row.event_id or row.event_id == self._event_id_at(entry, row.version))
            )
            if ok:
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
        the owner's log does not change under it)."""
        if entry.snap_event is None or entry.snap_event[0] != version:
            try:
                ids = self.log.read_at([entry.positions[version - 1]], ["event_id"])["event_id"]
            except Exception as exc:  # cannot show the snapshot matches the log: not used
                log.warning("partition %d: reading an event id failed: %s", self.partition, exc)
                return None
            entry.snap_event = (version, ids[0])
        return entry.snap_event[1]

    def _ensure_commands(self, key: tuple[str, str], entry: AggregateEntry) -> dict[str, Remembered]:
        """Recent command ids (the dedup window), read from the log the first time they are needed."""
        if entry.commands is None:
            entry.commands = {}
            if entry.version:
                window = entry.positions[-self.config.dedup_window :]
                cols = self.log.read_at(window, ["position", "version", "command_id", "command_digest"])
                for pos, version, cid, digest in zip(
                    cols["position"], cols["version"], cols["command_id"], cols["command_digest"]
                ):
                    rec = entry.commands.get(cid)
                    if rec is not None and rec.version == version - 1 and rec.first_position + rec.count == pos:
                        rec.version, rec.count = version, rec.count + 1
                    else:
                        entry.remember(cid, Remembered(digest, version, pos, 1), self.config.dedup_window)
        return entry.commands

    def _passivate_over_limit(self) -> None:
        while len(self.hydrated) > self.config.max_hydrated:
            _key, entry = self.hydrated.popitem(last=False)
            entry.state, entry.commands = _NOT_HYDRATED, None
            self.counts["passivations"] += 1

    def passivate(self, key: tuple[str, str] | None = None) -> int:
        """Drop states from memory (one aggregate, or all); they rehydrate on next use."""
        keys = [key] if key is not None else list(self.hydrated)
        n = 0
        for k in keys:
            entry = self.hydrated.pop(k, None)
            if entry is not None:
                entry.state, entry.commands = _NOT_HYDRATED, None
                n += 1
        self.counts["passivations"] += n
        return n

    def hydrate_all(self, limit: int | None = None) -> int:
        """Hydrate the most recently written aggregates, up to ``limit`` (default ``max_hydrated``).

        In bulk: every snapshot row once, then one pass over the events after them in
        position order, read in chunks; the same checks as one-at-a-time hydration.
        """
        limit = self.config.max_hydrated if limit is None else min(limit, self.config.max_hydrated)
        if limit <= 0 or not self.aggregates:
            return 0
        last = np.fromiter((e.positions[-1] for e in self.aggregates.values()), dtype=np.int64, count=len(self.aggregates))
        keys_all = list(self.aggregates)
        chosen = [keys_all[i] for i in np.argsort(last, kind="stable")[-limit:].tolist()]
        todo = [k for k in chosen if self.aggregates[k].state is _NOT_HYDRATED]
        states: dict[tuple[str, str], list[Any]] = {}  # key -> [state, version reached]
        best: dict[tuple[str, str], SnapshotRow] = {}
        stale: set[tuple[str, str]] = set()
        wanted = set(todo)
        for row in self.snapshots.all_rows():
            k = (row.aggregate_type, row.aggregate_id)
            if k not in wanted:
                continue
            if not self._snapshot_worth_keeping(row):
                stale.add(k)
            elif k not in best or best[k].version < row.version:
                best[k] = row
        # the log must hold that very event there: compare event ids, read in one pass
        check = sorted((self.aggregates[k].positions[r.version - 1], k) for k, r in best.items() if r.event_id)
        if check:
            try:
                ids = self.log.read_at([pos for pos, _k in check], ["event_id"])["event_id"]
            except Exception as exc:
                log.warning("partition %d: reading event ids failed, snapshots not used: %s", self.partition, exc)
                ids = [None] * len(check)
            for (_pos, k), eid in zip(check, ids):
                if eid is not None:
                    self.aggregates[k].snap_event = (best[k].version, eid)
                if eid != best[k].event_id:
                    stale.add(k)
                    del best[k]
        used: set[tuple[str, str]] = set()
        initial: dict[str, Any] = {}  # states are immutable (evolve returns a new one): one start per type
        for k in todo:
            state = initial.get(k[0])
            if state is None:
                state = initial[k[0]] = self.registry.aggregate(k[0]).initial_state()
            at = 0
            row = best.get(k)
            if row is not None:
                try:
                    state, at = self.snapshot_format.codec(k[0]).decode(row.state, row.encoding), row.version
                    self.counts["snapshot_used"] += 1
                    used.add(k)
                except Exception as exc:
                    stale.add(k)
                    log.warning("%s/%s: snapshot at version %d does not decode, ignored: %s", *k, row.version, exc)
            states[k] = [state, at]
        needed = array("q")
        for k in todo:
            at = states[k][1]
            needed.extend(self.aggregates[k].positions[at:] if at else self.aggregates[k].positions)
        positions = np.sort(np.frombuffer(needed, dtype=np.int64)) if needed else np.empty(0, np.int64)
        cols = ["position", "aggregate_type", "aggregate_id", "version", "event_type", "schema_version", "payload"]
        classes: dict[str, Any] = {}
        for start in range(0, len(positions), 100_000):
            chunk = self.log.read_at(positions[start : start + 100_000], cols)
            for pos, atype, aid, version, etype, sv, payload in zip(*(chunk[c] for c in cols)):
                slot = states[(atype, aid)]
                if version != slot[1] + 1:
                    raise StoreCorrupted(f"{atype}/{aid}: version {version} follows {slot[1]} at position {pos}")
                agg_cls = classes.get(atype) or classes.setdefault(atype, self.registry.aggregate(atype))
                for event in self._decode(etype, sv, payload, pos, atype, aid, version):
                    slot[0] = agg_cls.evolve(slot[0], event)
                slot[1] = version
        self.counts["events_replayed"] += len(positions)
        for k in todo:
            entry = self.aggregates[k]
            entry.state = states[k][0]
            if k in used:
                entry.snap_version = max(entry.snap_version, best[k].version)
            elif k in stale:  # taken under other code, or not of this log: replace it
                self.counts["snapshot_ignored"] += 1
                entry.snap_version = -1
            self.hydrated[k] = entry
            self._note_for_snapshot(k, entry)
        for k in chosen:
            self.hydrated.move_to_end(k)
        self.counts["hydrations"] += len(todo)
        self._passivate_over_limit()
        return len(chosen)

    # -- snapshots ----------------------------------------------------------------------------

    def _note_for_snapshot(self, key: tuple[str, str], entry: AggregateEntry, event_id: str | None = None) -> None:
        """``event_id``: of the aggregate's last event, if known (else read when the snapshot is written)."""
        every = self.registry.aggregate(key[0]).snapshot_every
        due = entry.snap_version < 0 or (every is not None and entry.version - entry.snap_version >= every)
        if due and entry.version > 0:
            if not self._snap_pending:
                self._snap_pending_since = time.monotonic()
            self._snap_pending[key] = (entry.version, entry.positions[-1], entry.state, event_id)
            entry.snap_version = entry.version

    def flush_snapshots(self, force: bool = False) -> int:
        """Write pending snapshots as one file (when enough wait, or they waited long, or forced)."""
        pending = self._snap_pending
        if not pending:
            return 0
        if not force and len(pending) < self.config.snapshot_flush_rows and (
            time.monotonic() - self._snap_pending_since < self.config.snapshot_flush_s
        ):
            return 0
        self._snap_pending = {}
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
            codec = self.snapshot_format.codec(atype)
            try:
                data = codec.encode(state)
            except Exception as exc:  # a state that cannot be encoded is never snapshotted: replay stays correct
                log.warning("%s/%s: state does not encode for a snapshot: %s", atype, aid, exc)
                continue
            fingerprint = self.snapshot_format.fingerprint(atype)
            rows.append(SnapshotRow(atype, aid, version, position, fingerprint, codec.encoding, data, event_id))
        try:
            self.snapshots.write(rows)
        except Exception as exc:  # snapshots are an optimisation: the log stays the truth (never fail a batch)
            log.error("partition %d: writing snapshots failed: %s", self.partition, exc)
            return 0
        self.counts["snapshots_written"] += len(rows)
        try:
            if self.snapshots.file_count > self.config.snapshot_max_files:
                self.snapshots.consolidate(self._snapshot_worth_keeping)
        except Exception as exc:
            log.error("partition %d: merging snapshot files failed: %s", self.partition, exc)
        return len(rows)

    def _snapshot_worth_keeping(self, row: SnapshotRow) -> bool:
        entry = self.aggregates.get((row.aggregate_type, row.aggregate_id))
        return (
            entry is not None
            and row.aggregate_type in self.registry.aggregates
            and row.fingerprint == self.snapshot_format.fingerprint(row.aggregate_type)
            and 1 <= row.version <= entry.version
            and entry.positions[row.version - 1] == row.position
        )

    # -- the write path -------------------------------------------------------------------

    def handle_batch(self, batch: Sequence[BatchItem]) -> list[ItemResult]:
        """Decide, durably append and acknowledge a batch; each command gets its own result.

        One command's failure (a bad envelope, a rejection, any exception) is its result alone.
        """
        if not isinstance(batch, (list, tuple)):
            raise InvalidPayload(f"a batch must be a list of items, not {type(batch).__name__}")
        self.counts["batches"] += 1
        results: list[ItemResult | None] = [None] * len(batch)
        working: dict[tuple[str, str], tuple[Any, int]] = {}  # key -> (state, version), this batch only
        new_ids: dict[tuple[str, str], dict[str, Remembered]] = {}
        accepted: list[tuple[int, int, int]] = []  # (batch index, first row index, row count)
        retried_in_batch: list[int] = []  # retries of a command accepted earlier in this same batch
        rows: list[Row] = []
        entry_rows: dict[tuple[str, str], list[int]] = {}  # key -> positions appended in this batch
        last_event: dict[tuple[str, str], str] = {}  # key -> id of its last event appended in this batch
        next_pos = self.log.next_position
        now_us = time.time_ns() // 1000
        for i, item in enumerate(batch):
            atype: Any = None
            try:
                # Step 1, for every command (duplicates too), before anything is decided or written.
                kind, atype, aid, cid, expected, body, meta = validate_envelope(item, self.config)
                agg_cls = self.registry.aggregate(atype)
                key = (atype, aid)
                if self.frozen or self.log.lost:
                    self._check_writable(key)
                entry = self.aggregates.get(key)
                if key in working:
                    state, version = working[key]
                elif entry is not None:
                    state, version = self._hydrated(key, entry), entry.version
                else:
                    state, version = agg_cls.initial_state(), 0
                digest = command_digest(kind, body)
                prior = new_ids.get(key, {}).get(cid) or (
                    self._ensure_commands(key, entry).get(cid) if entry is not None else None
                )
                if prior is not None:
                    if prior.digest != digest:
                        raise CommandIdReused(
                            f"command id {cid!r} was already used on {atype}/{aid} for a different command"
                        )
                    results[i] = ("dup", prior.version, prior.first_position, prior.count)
                    if cid in new_ids.get(key, {}):
                        retried_in_batch.append(i)
                    continue
                if expected is not None and expected != version:
                    raise ConcurrencyError(f"{atype}/{aid}", expected, version)
                events, occurred = self._events_for(kind, atype, body, state, agg_cls)
                if len(events) > self.config.max_events_per_command:
                    raise PayloadTooLarge(
                        f"{atype}/{aid}: {len(events)} events exceed max_events_per_command="
                        f"{self.config.max_events_per_command}"
                    )
                # Only events that read back as decided are stored (strict JSON, valid, equal), and the
                # state evolves from what was read back: the live state is the state a replay builds.
                stored = [self.registry.stored_event(e) for e in events]
                payloads = [text for text, _back in stored]
                events = [back for _text, back in stored]
                size = sum(utf8_size(p, "event payload") for p in payloads)
                if size > self.config.max_event_bytes:
                    raise PayloadTooLarge(
                        f"{atype}/{aid}: events of {size} bytes of UTF-8 exceed max_event_bytes={self.config.max_event_bytes}"
                    )
                for e in events:
                    state = agg_cls.evolve(state, e)
                meta = meta or {}
                corr = meta.get("correlation_id") or cid
                caus = meta.get("causation_id") or cid
                principal = meta.get("principal")
                base_meta = dict(meta.get("metadata") or {})
                if meta.get("reason") is not None:
                    base_meta["reason"] = meta["reason"]
                # Build this command's rows apart, so a failure half-way leaves nothing in the frame.
                own: list[Row] = []
                base_json = _metadata_json(base_meta)
                for n, (e, payload) in enumerate(zip(events, payloads)):
                    md_json = base_json if occurred[n] is None else _metadata_json({**base_meta, "occurred_at": occurred[n]})
                    size += len(md_json)  # what is stored per event counts, metadata included
                    if size > self.config.max_event_bytes:
                        raise PayloadTooLarge(
                            f"{atype}/{aid}: events and their metadata would store more than "
                            f"max_event_bytes={self.config.max_event_bytes} bytes (metadata is stored with every event)"
                        )
                    own.append(
                        (
                            self.partition,
                            next_pos + n,
                            atype,
                            aid,
                            version + n + 1,
                            e.event_type,
                            e.schema_version,
                            os.urandom(16).hex(),  # event id: 128 random bits, as uuid4
                            cid,
                            digest,
                            corr,
                            caus,
                            principal,
                            now_us,
                            payload,
                            md_json,
                        )
                    )
                start = len(rows)
                rows.extend(own)
                if own:
                    entry_rows.setdefault(key, []).extend(r[1] for r in own)
                    last_event[key] = own[-1][COL["event_id"]]
                next_pos += len(own)
                version += len(events)
                working[key] = (state, version)
                if events:
                    new_ids.setdefault(key, {})[cid] = Remembered(digest, version, rows[start][1], len(events))
                accepted.append((i, start, len(events)))
                if not events:
                    results[i] = ("ok", version, [])
            except (CommandRejected, UnreadableEvent, StoreCorrupted) as exc:
                results[i] = ("err", exc)
                kind_name = type(exc).__name__
                self.rejections[kind_name] = self.rejections.get(kind_name, 0) + 1
            except BaseException as exc:  # a bug in user code (decide/evolve, even SystemExit), anything: this command only
                where = atype if isinstance(atype, str) else "?"
                err = UserCodeError(f"{type(exc).__name__} in {where[:200]}: {safe_text(exc)}")
                results[i] = ("err", err)
                self.rejections["UserCodeError"] = self.rejections.get("UserCodeError", 0) + 1
        if rows:
            before = self.log.next_position
            try:
                self.log.append(rows)
            except StorageError as exc:
                for i in [a[0] for a in accepted] + retried_in_batch:
                    results[i] = ("err", exc)
                self.rejections["StorageError"] = self.rejections.get("StorageError", 0) + len(accepted)
                self.counts["rejected"] += sum(1 for r in results if r is not None and r[0] == "err")
                return self._resolve_dups(results)
            except EsActorsError:
                raise
            except Exception as exc:
                if self.log.next_position != before:  # the rows are durable; the failure was upkeep after it
                    log.error("partition %d: after a durable append: %s: %s", self.partition, type(exc).__name__, exc)
                else:
                    # Nothing was written (the frame is built before any byte is). The rows passed every
                    # check, yet one of them cannot be encoded: find its command by going one at a time,
                    # in order, so every other command of the batch is still decided and acknowledged.
                    return self._one_by_one(batch, exc)
        for key, (state, version) in working.items():
            entry = self.aggregates.get(key)
            if entry is None:
                entry = self.aggregates[key] = AggregateEntry()
                entry.commands = {}
            new_positions = entry_rows.get(key)
            if new_positions:
                entry.positions.extend(new_positions)
            entry.state, entry.version = state, version
            self.hydrated[key] = entry
            self.hydrated.move_to_end(key)
            if entry.commands is not None:  # else loaded from the log (which now has these) when needed
                for cid, rec in new_ids.get(key, {}).items():
                    entry.remember(cid, rec, self.config.dedup_window)
            self._note_for_snapshot(key, entry, last_event.get(key))
        self._passivate_over_limit()
        self.flush_snapshots()
        for i, start, n in accepted:
            if n:
                results[i] = ("ok", rows[start + n - 1][COL["version"]], rows[start : start + n])
        self.counts["accepted"] += len(accepted)
        self.counts["rejected"] += sum(1 for r in results if r is not None and r[0] == "err")
        return self._resolve_dups(results)

    def _one_by_one(self, batch: Sequence[BatchItem], exc: Exception) -> list[ItemResult]:
        if len(batch) == 1:
            err = InvalidPayload(f"the command's rows cannot be written to the log ({type(exc).__name__}: {exc}); nothing was written")
            self.rejections["InvalidPayload"] = self.rejections.get("InvalidPayload", 0) + 1
            self.counts["rejected"] += 1
            return [("err", err)]
        self.counts["batches"] -= 1  # counted again per item
        return [self.handle_batch([item])[0] for item in batch]

    def _events_for(
        self, kind: str, atype: str, body: Any, state: Any, agg_cls: Any
    ) -> tuple[list[Event], list[str | None]]:
        if kind == "command":
            command_type, payload = body
            command = self.registry.command(atype, command_type, payload)
            events = list(agg_cls.decide(state, command))
            for e in events:
                self.registry.check_event(atype, e)
            return events, [None] * len(events)
        if kind == "import":
            events, occurred = [], []
            for event_type, payload, occurred_at in body:
                cls = self.registry.event_class(event_type)
                try:
                    e = cls.model_validate_json(payload)
                except Exception as exc:
                    raise InvalidPayload(f"imported {event_type!r} payload is invalid: {exc}") from None
                self.registry.check_event(atype, e)
                events.append(e)
                occurred.append(occurred_at)
            return events, occurred
        raise InvalidPayload(f"unknown batch item kind {kind!r}")

    def _resolve_dups(self, results: list[ItemResult | None]) -> list[ItemResult]:
        """A retried command gets the rows its first run appended, read back from the log."""
        out: list[ItemResult] = []
        for r in results:
            assert r is not None
            if r[0] == "dup":
                _tag, version, first, count = r
                out.append(("dup", version, self.log.read_positions(first, first + count - 1)))
                self.counts["duplicate"] += 1
            else:
                out.append(r)
        return out

    def _check_writable(self, key: tuple[str, str]) -> None:
        """Refuse commands while a recorded loss is unaccepted (any aggregate of this partition
        may have lost its newest events, and their versions must not be handed out again), and
        always for aggregates known to have lost events. An acceptance is seen within a second."""
        unresolved = self.log.lost.unresolved(self.partition)
        if unresolved and time.monotonic() - self._damage_checked > 1.0:
            self._damage_checked = time.monotonic()
            self.log.lost = LostRanges.load(self.root)  # an operator may have accepted it meanwhile
            unresolved = self.log.lost.unresolved(self.partition)
        if unresolved:
            spans = ", ".join(f"{r.first}..{r.last}" for r in unresolved)
            raise PartitionDamaged(
                f"{key[0]}/{key[1]}: partition {self.partition} lost positions {spans} (recorded by a repair, "
                "not yet accepted); commands are refused until an operator accepts the loss with "
                "`es-actors repair --store PATH --accept --principal NAME --reason TEXT`; reads still work"
            )
        if key in self.frozen:
            entry = self.aggregates.get(key)
            raise PartitionDamaged(
                f"{key[0]}/{key[1]} lost events in a repaired partition {self.partition}; it is readable up to "
                f"version {entry.version if entry else 0} and refuses commands (see lost-ranges.json)"
            )

    # -- reads and upkeep -----------------------------------------------------------------

    def get_state(self, aggregate_type: str, aggregate_id: str) -> tuple[int, Any]:
        agg_cls = self.registry.aggregate(aggregate_type)
        key = (aggregate_type, aggregate_id)
        entry = self.aggregates.get(key)
        if entry is None:
            return 0, agg_cls.initial_state()
        state = self._hydrated(key, entry)
        self._passivate_over_limit()
        return entry.version, state

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


__all__ = ["Partition", "EsActorsError"]


def _metadata_json(md: dict[str, Any]) -> str:
    """Metadata as stored: compact, UTF-8 (the envelope measured it the same way), strict JSON."""
    if not md:
        return "{}"
    try:
        return json.dumps(md, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"metadata is not JSON: {safe_text(exc)}") from None


def safe_text(exc: BaseException) -> str:
    """An error's text, or its type's name if even that raises (a hostile ``__str__``)."""
    try:
        return str(exc)[:1000]
    except BaseException:
        return f"<{type(exc).__name__} without a readable message>"
