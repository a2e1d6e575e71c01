"""One partition's write model: the aggregates it owns, decided and committed in groups.

This is the body of a partition actor, kept free of Ray so it can be tested and reasoned
about on its own. A batch is handled in three steps:

1. decide every command in order against a working copy of its aggregate (idempotency
   and expected-version checks first; a rejected command produces nothing);
2. append all accepted events as one durable write (one frame, one fdatasync);
3. only then publish the new states and remember the command ids, and acknowledge.

If step 2 fails, the working copies are dropped: nothing was written and nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from .config import StoreConfig
from .domain import DomainRegistry, Event
from .errors import (
    CommandIdReused,
    CommandRejected,
    UserCodeError,
    ConcurrencyError,
    EsActorsError,
    InvalidPayload,
    PayloadTooLarge,
    StorageError,
    StoreCorrupted,
)
from .records import COL, table_to_rows
from .storage.layout import StoreLayout
from .storage.partition_log import PartitionLog

Row = tuple[Any, ...]

# A batch item, as the client sends it:
#   (kind, aggregate_type, aggregate_id, command_id, expected_version, body, meta)
# kind "command": body = (command_type, payload JSON text)
# kind "import":  body = [(event_type, payload JSON text, occurred_at iso or None), ...]
# meta = {"principal", "correlation_id", "causation_id", "reason", "metadata"} or None
BatchItem = tuple[str, str, str, str, "int | None", Any, "dict[str, Any] | None"]
# A result: ("ok", version, rows) | ("dup", version, rows) | ("err", exception)
ItemResult = tuple[Any, ...]


@dataclass(slots=True)
class Remembered:
    """What an accepted command did, kept so its retry returns the same result."""

    digest: str
    version: int
    first_position: int
    count: int


class AggregateEntry:
    __slots__ = ("state", "version", "commands")

    def __init__(self, state: Any, version: int) -> None:
        self.state = state
        self.version = version
        self.commands: OrderedDict[str, Remembered] = OrderedDict()

    def remember(self, command_id: str, rec: Remembered, window: int) -> None:
        self.commands[command_id] = rec
        if len(self.commands) > window:
            self.commands.popitem(last=False)


def command_digest(kind: str, body: Any) -> str:
    """Fingerprint of what a command asks, to tell a retry from a reused id.

    Payloads arrive as the JSON pydantic serialized them (fields in declaration order), so
    the same command always hashes the same without re-encoding it here.
    """
    text = f"{body[0]}\x00{body[1]}" if kind == "command" else json.dumps(body)
    return hashlib.blake2b(f"{kind}\x00{text}".encode(), digest_size=12).hexdigest()


class Partition:
    def __init__(self, layout: StoreLayout, partition: int, registry: DomainRegistry, config: StoreConfig) -> None:
        self.partition = partition
        self.registry = registry
        self.config = config
        self.log = PartitionLog(layout, partition, config)
        self.aggregates: dict[tuple[str, str], AggregateEntry] = {}
        self.counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "batches": 0}
        self.rejections: dict[str, int] = {}
        try:
            self._replay()
        except BaseException:
            self.log.close()  # release the lock and stop the sealer: this owner will not run
            raise

    # -- start-up -------------------------------------------------------------------------

    def _replay(self) -> None:
        """Rebuild states and remembered command ids from the durable log."""
        table, unsealed = self.log.durable_snapshot()
        rows = table_to_rows(table.sort_by("position")) + unsealed
        expected_pos = 1
        for row in rows:
            if row[COL["position"]] != expected_pos:
                raise StoreCorrupted(f"partition {self.partition}: position {row[1]} where {expected_pos} expected")
            expected_pos += 1
            self._apply_stored(row)

    def _apply_stored(self, row: Row) -> None:
        atype, aid, version = row[COL["aggregate_type"]], row[COL["aggregate_id"]], row[COL["version"]]
        agg_cls = self.registry.aggregate(atype)
        key = (atype, aid)
        entry = self.aggregates.get(key)
        if entry is None:
            entry = self.aggregates[key] = AggregateEntry(agg_cls.initial_state(), 0)
        if version != entry.version + 1:
            raise StoreCorrupted(f"{atype}/{aid}: version {version} follows {entry.version} at position {row[1]}")
        try:
            event = self.registry.event_class(row[COL["event_type"]]).model_validate_json(row[COL["payload"]])
        except Exception as exc:
            raise InvalidPayload(
                f"stored event at partition {self.partition} position {row[1]} ({row[COL['event_type']]} "
                f"v{row[COL['schema_version']]}) does not load: {exc}"
            ) from None
        entry.state = agg_cls.evolve(entry.state, event)
        entry.version = version
        cid = row[COL["command_id"]]
        rec = entry.commands.get(cid)
        if rec is not None and rec.version == version - 1 and rec.first_position + rec.count == row[1]:
            rec.version, rec.count = version, rec.count + 1
        else:
            entry.remember(cid, Remembered(row[COL["command_digest"]], version, row[1], 1), self.config.dedup_window)

    # -- the write path -------------------------------------------------------------------

    def handle_batch(self, batch: Sequence[BatchItem]) -> list[ItemResult]:
        self.counts["batches"] += 1
        results: list[ItemResult | None] = [None] * len(batch)
        working: dict[tuple[str, str], tuple[Any, int]] = {}  # key -> (state, version), this batch only
        new_ids: dict[tuple[str, str], dict[str, Remembered]] = {}
        accepted: list[tuple[int, int, int]] = []  # (batch index, first row index, row count)
        retried_in_batch: list[int] = []  # retries of a command accepted earlier in this same batch
        rows: list[Row] = []
        next_pos = self.log.next_position
        now_us = time.time_ns() // 1000
        for i, item in enumerate(batch):
            try:
                kind, atype, aid, cid, expected, body, meta = item
                agg_cls = self.registry.aggregate(atype)
                key = (atype, aid)
                entry = self.aggregates.get(key)
                state, version = working.get(key) or (
                    (entry.state, entry.version) if entry else (agg_cls.initial_state(), 0)
                )
                digest = command_digest(kind, body)
                prior = new_ids.get(key, {}).get(cid) or (entry.commands.get(cid) if entry else None)
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
                payloads = [e.model_dump_json() for e in events]
                size = sum(len(p) for p in payloads)
                if size > self.config.max_event_bytes:
                    raise PayloadTooLarge(
                        f"{atype}/{aid}: events of {size} bytes exceed max_event_bytes={self.config.max_event_bytes}"
                    )
                for e in events:
                    state = agg_cls.evolve(state, e)
                meta = meta or {}
                corr = meta.get("correlation_id") or cid
                caus = meta.get("causation_id") or cid
                principal = meta.get("principal")
                for name, value in (("command_id", cid), ("correlation_id", corr), ("causation_id", caus),
                                    ("principal", principal), ("reason", meta.get("reason"))):
                    if value is not None and not isinstance(value, str):
                        raise InvalidPayload(f"{name} must be a string, not {type(value).__name__}")
                base_meta = dict(meta.get("metadata") or {})
                if meta.get("reason") is not None:
                    base_meta["reason"] = meta["reason"]
                # Build this command's rows apart, so a failure half-way leaves nothing in the frame.
                own: list[Row] = []
                for n, (e, payload) in enumerate(zip(events, payloads)):
                    md = base_meta
                    if occurred[n] is not None:
                        md = {**base_meta, "occurred_at": occurred[n]}
                    try:
                        md_json = json.dumps(md, default=str) if md else "{}"
                    except (TypeError, ValueError) as exc:
                        raise InvalidPayload(f"metadata is not JSON: {exc}") from None
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
                next_pos += len(own)
                version += len(events)
                working[key] = (state, version)
                if events:
                    new_ids.setdefault(key, {})[cid] = Remembered(digest, version, rows[start][1], len(events))
                accepted.append((i, start, len(events)))
                if not events:
                    results[i] = ("ok", version, [])
            except CommandRejected as exc:
                results[i] = ("err", exc)
                kind_name = type(exc).__name__
                self.rejections[kind_name] = self.rejections.get(kind_name, 0) + 1
            except Exception as exc:  # a bug in user code (decide/evolve) must not stop the partition
                err = UserCodeError(f"{type(exc).__name__} in {item[1] if len(item) > 1 else '?'}: {exc}")
                results[i] = ("err", err)
                self.rejections["UserCodeError"] = self.rejections.get("UserCodeError", 0) + 1
        if rows:
            try:
                self.log.append(rows)
            except StorageError as exc:
                for i in [a[0] for a in accepted] + retried_in_batch:
                    results[i] = ("err", exc)
                self.rejections["StorageError"] = self.rejections.get("StorageError", 0) + len(accepted)
                self.counts["rejected"] += sum(1 for r in results if r is not None and r[0] == "err")
                return self._resolve_dups(results)
        for key, (state, version) in working.items():
            entry = self.aggregates.get(key)
            if entry is None:
                entry = self.aggregates[key] = AggregateEntry(state, version)
            entry.state, entry.version = state, version
            for cid, rec in new_ids.get(key, {}).items():
                entry.remember(cid, rec, self.config.dedup_window)
        for i, start, n in accepted:
            if n:
                results[i] = ("ok", rows[start + n - 1][COL["version"]], rows[start : start + n])
        self.counts["accepted"] += len(accepted)
        self.counts["rejected"] += sum(1 for r in results if r is not None and r[0] == "err")
        return self._resolve_dups(results)

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

    # -- reads and upkeep -----------------------------------------------------------------

    def get_state(self, aggregate_type: str, aggregate_id: str) -> tuple[int, Any]:
        agg_cls = self.registry.aggregate(aggregate_type)
        entry = self.aggregates.get((aggregate_type, aggregate_id))
        return (entry.version, entry.state) if entry else (0, agg_cls.initial_state())

    def stats(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "next_position": self.log.next_position,
            "durable_writes": self.log.durable_writes,
            "unsealed_events": self.log.unsealed_count,
            "sealed_segments": len(self.log.segments.segments),
            "aggregates": len(self.aggregates),
            "seal_error": self.log.seal_error,
            "rejections": dict(self.rejections),
            **self.counts,
        }

    def seal(self) -> None:
        self.log.seal_all()

    def close(self) -> None:
        self.log.close()


__all__ = ["Partition", "EsActorsError"]
