"""Deciding one command against a working copy of its aggregate, and the rows it would append.

A command's events are checked before anything is kept of them: at most
``max_events_per_command``, each stored only if it reads back as decided (strict JSON, valid,
equal), and the state evolves from what was read back, so the live
state is the state a replay builds. Its rows are built apart, so a failure half-way leaves
nothing of it in the batch. Nothing here writes: the batch commits as one (commit.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry, Event
from es_actors.errors import InvalidPayload, PayloadTooLarge
from es_actors.write.envelope import utf8_size
from es_actors.write.partition.dedup import Duplicate, Remembered
from es_actors.write.partition.index import Key
from es_actors.write.protocol import BatchItem, CommandEnvelope, ImportEnvelope, ItemResult, Row


class BatchWork:
    """One batch in progress: working copies of its aggregates, the rows it will append, and
    each command's outcome so far. Dropped whole if the append fails: nothing changed.

    A plain slotted class with literal defaults: it is built for every batch, a lone
    writer's batch of one included, where a dataclass's default factories cost ~1 us."""

    __slots__ = ("next_position", "now_us", "results", "working", "new_ids", "accepted", "retried_in_batch",
                 "rows", "entry_rows", "last_event", "intercepted", "refusals", "duplicates")

    def __init__(self, next_position: int, now_us: int, results: list[ItemResult | Duplicate | None]) -> None:
        self.next_position = next_position
        self.now_us = now_us
        self.results = results
        self.working: dict[Key, tuple[Any, int]] = {}  # key -> (state, version)
        self.new_ids: dict[Key, dict[str, Remembered]] = {}  # command ids accepted in this batch
        self.accepted: list[int] = []  # indexes of the commands decided (their results wait for the append)
        self.retried_in_batch: list[int] = []  # retries of a command accepted earlier in this batch
        self.rows: list[Row] = []
        self.entry_rows: dict[Key, list[int]] = {}  # key -> positions appended in this batch
        self.last_event: dict[Key, str] = {}  # key -> id of its last event appended in this batch
        self.intercepted: list[BaseException | None] = []  # the interceptors' refusals, by index
        self.refusals = 0  # results that are refusals (counted as they are made)
        self.duplicates = 0  # results that are Duplicate (answered from the log at the end)

    def refuse(self, index: int, error: BaseException) -> None:
        previous = self.results[index]
        if type(previous) is Duplicate:
            self.duplicates -= 1
        if previous is None or type(previous) is not ItemResult or previous.error is None:
            self.refusals += 1
        self.results[index] = ItemResult.refused(error)

    def duplicate(self, index: int, prior: Remembered) -> None:
        self.results[index] = Duplicate(prior.version, prior.first_position, prior.count)
        self.duplicates += 1


def events_for(registry: DomainRegistry, env: BatchItem, state: Any, agg_cls: Any) -> tuple[list[Event], list[str | None]]:
    """The events a command decides (or an import brings), each checked to belong to its
    aggregate, with the original time of each imported event."""
    atype = env.aggregate_type
    if type(env) is CommandEnvelope:
        command = registry.command(atype, env.command_type, env.payload)
        events = list(agg_cls.decide(state, command))
        for e in events:
            registry.check_event(atype, e)
        return events, [None] * len(events)
    assert type(env) is ImportEnvelope
    events, occurred = [], []
    for imported in env.events:
        cls = registry.event_class(imported.event_type)
        try:
            e = cls.model_validate_json(imported.payload)
        except Exception as exc:
            raise InvalidPayload(f"imported {imported.event_type!r} payload is invalid: {exc}") from None
        registry.check_event(atype, e)
        events.append(e)
        occurred.append(imported.occurred_at)
    return events, occurred


def decide(
    registry: DomainRegistry, config: StoreConfig, partition: int, env: BatchItem, state: Any, version: int,
    agg_cls: Any, digest: str, next_position: int, now_us: int,
) -> tuple[list[Row], Any]:
    """The rows one command appends (positions from ``next_position``, versions after
    ``version``) and the state after them. Raises the command's rejection."""
    atype, aid, cid = env.aggregate_type, env.aggregate_id, env.command_id
    events, occurred = events_for(registry, env, state, agg_cls)
    limit = config.max_event_bytes
    if len(events) > config.max_events_per_command:
        raise PayloadTooLarge(
            f"{atype}/{aid}: {len(events)} events exceed max_events_per_command={config.max_events_per_command}"
        )
    stored = [registry.stored_event(e) for e in events]
    payloads = [text for text, _back in stored]
    events = [back for _text, back in stored]
    size = sum(utf8_size(p, "event payload") for p in payloads)
    if size > limit:
        raise PayloadTooLarge(f"{atype}/{aid}: events of {size} bytes of UTF-8 exceed max_event_bytes={limit}")
    evolve = agg_cls.evolve  # (the fold of hydration, inline: this runs for every command)
    for e in events:
        state = evolve(state, e)
    corr = env.correlation_id or cid
    caus = env.causation_id or cid
    base_meta = dict(env.metadata or {})
    if env.reason is not None:
        base_meta["reason"] = env.reason
    own: list[Row] = []
    base_json = metadata_json(base_meta)
    for n, (e, payload) in enumerate(zip(events, payloads)):
        md_json = base_json if occurred[n] is None else metadata_json({**base_meta, "occurred_at": occurred[n]})
        size += len(md_json)  # what is stored per event counts, metadata included
        if size > limit:
            raise PayloadTooLarge(
                f"{atype}/{aid}: events and their metadata would store more than max_event_bytes={limit} bytes "
                "(metadata is stored with every event)"
            )
        own.append((
            partition, next_position + n, atype, aid, version + n + 1, e.event_type, e.schema_version,
            os.urandom(16).hex(),  # event id: 128 random bits, as uuid4
            cid, digest, corr, caus, env.principal, now_us, payload, md_json,
        ))
    return own, state


def metadata_json(md: dict[str, Any]) -> str:
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
