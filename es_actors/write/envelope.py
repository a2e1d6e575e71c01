"""The command envelope: everything that travels with a command, checked per command.

A batch item is a :class:`~es_actors.write.protocol.CommandEnvelope` or
:class:`~es_actors.write.protocol.ImportEnvelope` (es_actors/write/protocol.py).
:func:`validate_envelope` is the one model of a valid item. It runs twice:

* in the client, before a command is queued: a bad command fails alone with
  :class:`InvalidPayload` (or :class:`PayloadTooLarge`), nothing of it is sent, and the other
  commands of the same ``submit_many`` go on;
* in the partition actor, as the first step of the command pipeline
  (es_actors/write/interceptors.py) for every command of a batch (duplicates included),
  before anything is decided or written. This run cannot be turned off: it is what stands
  between a client that skipped the first one (an old client, a hand-made batch) and the log.

What it guarantees (limits in :class:`~es_actors.config.StoreConfig`, sizes in UTF-8 bytes):
the item is exactly one of the envelope classes; every id and audit field is a ``str`` (or None
where optional) that encodes as UTF-8 (no lone surrogates) within its limit; ``command_id`` is
non-empty; ``expected_version`` is None or an ``int`` in 0..2**63-1 (not a bool, not ``"1"``);
``metadata`` is a JSON object of str keys and JSON values (no NaN/Infinity), nested at most
``max_metadata_depth`` deep, at most ``max_metadata_bytes`` as JSON; the payload texts are
valid UTF-8 within ``max_event_bytes``. So every row the actor builds from an item encodes,
and one item cannot fail a batch.

Hand-written rather than a pydantic model: a command without audit fields costs ~0.3 us,
with ids and reason ~1.7 us, with a small metadata object ~5 us (benchmarks/envelope_cost.py).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from es_actors.codecs.rows import INT64_MAX
from es_actors.config import StoreConfig
from es_actors.errors import InvalidPayload, PayloadTooLarge
from es_actors.write.protocol import BatchItem, CommandEnvelope, ImportedEvent, ImportEnvelope



def utf8_size(value: str, field: str) -> int:
    """Encoded size of a text; InvalidPayload naming ``field`` if it is not valid UTF-8."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidPayload(
            f"{field} is not valid UTF-8 text: lone surrogate {value[exc.start]!r} at index {exc.start}"
        ) from None


def check_text(value: Any, field: str, limit: int, limit_name: str, *, empty: bool = True) -> str:
    """``value`` as a plain str, refused unless it is a str that encodes within ``limit`` bytes."""
    if type(value) is not str:
        if not isinstance(value, str):
            raise InvalidPayload(f"{field} must be a string, not {type(value).__name__}")
        value = str.__str__(value)  # a str subclass (e.g. an enum) travels as the plain text
    size = utf8_size(value, field)
    if size > limit:
        raise PayloadTooLarge(f"{field} is {size} bytes of UTF-8, over {limit_name}={limit}")
    if not size and not empty:
        raise InvalidPayload(f"{field} must not be empty")
    return value


def check_metadata(metadata: Any, config: StoreConfig) -> str:
    """Metadata as compact JSON text, refused unless it is a JSON object within the limits."""
    if not isinstance(metadata, dict):
        raise InvalidPayload(f"metadata must be a dict (a JSON object), not {type(metadata).__name__}")
    max_depth, max_bytes = config.max_metadata_depth, config.max_metadata_bytes
    # Iterative walk: a value nested 100,000 deep gets a clear error, not a RecursionError.
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > max_bytes:  # every JSON value takes at least one byte
            raise PayloadTooLarge(f"metadata holds more than {max_bytes} values, over max_metadata_bytes={max_bytes}")
        if value is None or isinstance(value, (str, bool, int)):
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidPayload(f"metadata is not JSON: it holds {value!r} (JSON has no NaN or Infinity)")
            continue
        if isinstance(value, (dict, list, tuple)):
            if depth > max_depth:
                raise InvalidPayload(f"metadata nests deeper than max_metadata_depth={max_depth}")
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise InvalidPayload(f"metadata is not JSON: key {key!r} is a {type(key).__name__}, not a string")
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)
            continue
        raise InvalidPayload(f"metadata is not JSON: it holds a {type(value).__name__} ({value!r:.60})")
    try:
        text = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:  # e.g. a str subclass whose __str__ fails
        raise InvalidPayload(f"metadata is not JSON: {exc}") from None
    size = utf8_size(text, "metadata")
    if size > max_bytes:
        raise PayloadTooLarge(f"metadata is {size} bytes as JSON, over max_metadata_bytes={max_bytes}")
    return text



def _optional_id(value: Any, field: str, config: StoreConfig) -> str | None:
    return None if value is None else check_text(value, field, config.max_id_bytes, "max_id_bytes")


def _check_events(events: Any, config: StoreConfig) -> list[ImportedEvent]:
    if not isinstance(events, (list, tuple)):
        raise InvalidPayload(f"the events of an import must be a list of ImportedEvent, not {type(events).__name__}")
    ids, total, out = config.max_id_bytes, 0, []
    for n, entry in enumerate(events):
        if type(entry) is not ImportedEvent:
            raise InvalidPayload(f"imported event {n} must be an ImportedEvent, not {type(entry).__name__}")
        etype = check_text(entry.event_type, f"imported event {n} type", ids, "max_id_bytes", empty=False)
        payload = entry.payload
        if type(payload) is not str:
            raise InvalidPayload(f"imported event {n} ({etype}) payload must be JSON text, not {type(payload).__name__}")
        total += utf8_size(payload, f"imported event {n} ({etype}) payload")
        occurred = entry.occurred_at
        if occurred is not None:
            occurred = check_text(occurred, f"imported event {n} occurred_at", ids, "max_id_bytes")
            try:
                datetime.fromisoformat(occurred)
            except ValueError:
                raise InvalidPayload(f"imported event {n} occurred_at {occurred[:60]!r} is not an ISO 8601 time") from None
        out.append(ImportedEvent(etype, payload, occurred))
    if total > config.max_event_bytes:
        raise PayloadTooLarge(f"the imported events are {total} bytes of UTF-8, over max_event_bytes={config.max_event_bytes}")
    return out


def validate_envelope(item: Any, config: StoreConfig) -> BatchItem:
    """The item with every envelope field checked (plain types); InvalidPayload naming the field if not.

    Does not decide, look anything up or touch the log: the same check runs in the client and,
    first for every command, in the partition actor. Returns ``item`` itself when it is
    already plain (the common case), else a checked copy.
    """
    try:  # (zero-cost in CPython 3.11 until something raises)
        cls = type(item)
        if cls is CommandEnvelope:
            atype, aid, cid, ctype, payload, expected = (
                item.aggregate_type, item.aggregate_id, item.command_id, item.command_type, item.payload, item.expected_version
            )
            p, c, k, r = item.principal, item.correlation_id, item.causation_id, item.reason
            ids = config.max_id_bytes
            # The common case in one expression: a command whose texts are all ASCII (so a length is
            # a size in bytes) and within their limits. Anything else takes the full check below.
            if (
                type(atype) is str and type(aid) is str and type(cid) is str and type(ctype) is str and type(payload) is str
                and (expected is None or (type(expected) is int and 0 <= expected <= INT64_MAX))
                and 0 < len(atype) <= ids and 0 < len(aid) <= ids and 0 < len(cid) <= ids and 0 < len(ctype) <= ids
                and len(payload) <= config.max_event_bytes
                and atype.isascii() and aid.isascii() and cid.isascii() and ctype.isascii() and payload.isascii()
                and item.metadata is None
                and (p is None or (type(p) is str and len(p) <= ids and p.isascii()))
                and (c is None or (type(c) is str and len(c) <= ids and c.isascii()))
                and (k is None or (type(k) is str and len(k) <= ids and k.isascii()))
                and (r is None or (type(r) is str and len(r) <= config.max_reason_bytes and r.isascii()))
            ):
                return item
        elif cls is not ImportEnvelope:
            raise InvalidPayload(
                f"a batch item must be a CommandEnvelope or an ImportEnvelope (es_actors.write.protocol), not {cls.__name__}"
            )
        ids = config.max_id_bytes
        atype = check_text(item.aggregate_type, "aggregate_type", ids, "max_id_bytes", empty=False)
        aid = check_text(item.aggregate_id, "aggregate_id", ids, "max_id_bytes", empty=False)
        cid = check_text(item.command_id, "command_id", ids, "max_id_bytes", empty=False)
        expected = item.expected_version
        if expected is not None:
            if type(expected) is not int:
                if isinstance(expected, bool) or not isinstance(expected, int):
                    raise InvalidPayload(f"expected_version must be an int or None, not {type(expected).__name__}")
                expected = int(expected)
            if not 0 <= expected <= INT64_MAX:
                raise InvalidPayload(f"expected_version must be in 0..2**63-1, not {expected}")
        if item.metadata is not None:
            check_metadata(item.metadata, config)
        audit: dict[str, Any] = dict(
            principal=_optional_id(item.principal, "principal", config),
            correlation_id=_optional_id(item.correlation_id, "correlation_id", config),
            causation_id=_optional_id(item.causation_id, "causation_id", config),
            reason=None if item.reason is None else check_text(
                item.reason, "reason", config.max_reason_bytes, "max_reason_bytes"),
            metadata=item.metadata or None,
        )
        if cls is ImportEnvelope:
            return ImportEnvelope(atype, aid, cid, _check_events(item.events, config), expected, **audit)
        ctype = check_text(item.command_type, "command_type", ids, "max_id_bytes", empty=False)
        payload = item.payload
        if type(payload) is not str:
            raise InvalidPayload(f"the {ctype} payload must be JSON text, not {type(payload).__name__}")
        size = utf8_size(payload, f"the {ctype} payload")
        if size > config.max_event_bytes:
            raise PayloadTooLarge(f"the {ctype} payload is {size} bytes of UTF-8, over max_event_bytes={config.max_event_bytes}")
        return CommandEnvelope(atype, aid, cid, ctype, payload, expected, **audit)
    except AttributeError as exc:  # an envelope built without its fields (e.g. by __new__ alone)
        raise InvalidPayload(f"the {type(item).__name__} has no {exc.name or 'field'!s} field set") from None