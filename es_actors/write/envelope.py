"""The command envelope: everything that travels with a command, checked per command.

A batch item is ``(kind, aggregate_type, aggregate_id, command_id, expected_version, body, meta)``.
:func:`validate_envelope` is the one model of a valid item. It runs twice:

* in the client, before a command is queued: a bad command fails alone with
  :class:`InvalidPayload` (or :class:`PayloadTooLarge`), nothing of it is sent, and the other
  commands of the same ``submit_many`` go on;
* in the partition actor, as the first step for every command of a batch (duplicates included),
  before anything is decided or written. This run cannot be turned off: it is what stands
  between a client that skipped the first one (an old client, a hand-made batch) and the log.
  It is the first step of the command pipeline.

What it guarantees (limits in :class:`~es_actors.config.StoreConfig`, sizes in UTF-8 bytes):
every id and audit field is a ``str`` (or None where optional) that encodes as UTF-8 (no lone
surrogates) within its limit; ``command_id`` is non-empty; ``expected_version`` is None or an
``int`` in 0..2**63-1 (not a bool, not ``"1"``); ``metadata`` is a JSON object of str keys and
JSON values (no NaN/Infinity), nested at most ``max_metadata_depth`` deep, at most
``max_metadata_bytes`` as JSON; the payload texts are valid UTF-8 within ``max_event_bytes``.
So every row the actor builds from an item encodes, and one item cannot fail a batch.

Hand-written rather than a pydantic model: a command without audit fields costs ~0.3 us,
with ids and reason ~1.7 us, with a small metadata object ~5 us (benchmarks/envelope_cost.py).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from es_actors.config import StoreConfig
from es_actors.errors import InvalidPayload, PayloadTooLarge

# A batch item, as the client sends it:
#   (kind, aggregate_type, aggregate_id, command_id, expected_version, body, meta)
# kind "command": body = (command_type, payload JSON text)
# kind "import":  body = [(event_type, payload JSON text, occurred_at iso or None), ...]
# meta = {"principal", "correlation_id", "causation_id", "reason", "metadata"} or None
BatchItem = tuple[str, str, str, str, "int | None", Any, "dict[str, Any] | None"]

KINDS = ("command", "import")
META_KEYS = frozenset({"principal", "correlation_id", "causation_id", "reason", "metadata"})
INT64_MAX = (1 << 63) - 1


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


def _check_meta(meta: Any, config: StoreConfig) -> dict[str, Any] | None:
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise InvalidPayload(f"the audit part of a command must be a dict or None, not {type(meta).__name__}")
    if not META_KEYS.issuperset(meta):
        unknown = [k for k in meta if k not in META_KEYS]
        raise InvalidPayload(f"unknown audit fields {unknown!r:.200}; known: {sorted(META_KEYS)}")
    ids = config.max_id_bytes
    p, c, k, r = meta.get("principal"), meta.get("correlation_id"), meta.get("causation_id"), meta.get("reason")
    if (  # the common case: ASCII ids within their limit, no metadata
        meta.get("metadata") is None
        and (p is None or (type(p) is str and len(p) <= ids and p.isascii()))
        and (c is None or (type(c) is str and len(c) <= ids and c.isascii()))
        and (k is None or (type(k) is str and len(k) <= ids and k.isascii()))
        and (r is None or (type(r) is str and len(r) <= config.max_reason_bytes and r.isascii()))
    ):
        return meta
    out: dict[str, Any] = {}
    for name in ("principal", "correlation_id", "causation_id"):
        value = meta.get(name)
        out[name] = None if value is None else check_text(value, name, ids, "max_id_bytes")
    reason = meta.get("reason")
    out["reason"] = None if reason is None else check_text(reason, "reason", config.max_reason_bytes, "max_reason_bytes")
    metadata = meta.get("metadata")
    if metadata is not None:
        check_metadata(metadata, config)
    out["metadata"] = metadata or None
    return out


def _check_body(kind: str, body: Any, config: StoreConfig) -> Any:
    limit = config.max_event_bytes
    if kind == "command":
        if not isinstance(body, (tuple, list)) or len(body) != 2:
            raise InvalidPayload("a command body must be (command_type, payload JSON text)")
        ctype = check_text(body[0], "command_type", config.max_id_bytes, "max_id_bytes", empty=False)
        payload = body[1]
        if type(payload) is not str:
            raise InvalidPayload(f"the {ctype} payload must be JSON text, not {type(payload).__name__}")
        size = utf8_size(payload, f"the {ctype} payload")
        if size > limit:
            raise PayloadTooLarge(f"the {ctype} payload is {size} bytes of UTF-8, over max_event_bytes={limit}")
        return (ctype, payload)
    if not isinstance(body, (tuple, list)):
        raise InvalidPayload("an import body must be a list of (event_type, payload JSON text, occurred_at or None)")
    total = 0
    out = []
    for n, entry in enumerate(body):
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise InvalidPayload(f"imported event {n} must be (event_type, payload JSON text, occurred_at or None)")
        etype = check_text(entry[0], f"imported event {n} type", config.max_id_bytes, "max_id_bytes", empty=False)
        payload = entry[1]
        if type(payload) is not str:
            raise InvalidPayload(f"imported event {n} ({etype}) payload must be JSON text, not {type(payload).__name__}")
        total += utf8_size(payload, f"imported event {n} ({etype}) payload")
        occurred = entry[2]
        if occurred is not None:
            occurred = check_text(occurred, f"imported event {n} occurred_at", config.max_id_bytes, "max_id_bytes")
            try:
                datetime.fromisoformat(occurred)
            except ValueError:
                raise InvalidPayload(f"imported event {n} occurred_at {occurred[:60]!r} is not an ISO 8601 time") from None
        out.append((etype, payload, occurred))
    if total > limit:
        raise PayloadTooLarge(f"the imported events are {total} bytes of UTF-8, over max_event_bytes={limit}")
    return out


def validate_envelope(item: Any, config: StoreConfig) -> BatchItem:
    """The item with every envelope field checked (plain types); InvalidPayload naming the field if not.

    Does not decide, look anything up or touch the log: the same check runs in the client and,
    first for every command, in the partition actor.
    """
    if type(item) is tuple and len(item) == 7:
        kind, atype, aid, cid, expected, body, meta = item
        ids = config.max_id_bytes
        # The common case in one expression: a command whose texts are all ASCII (so a length is
        # a size in bytes) and within their limits. Anything else takes the full check below.
        if (
            type(kind) is str and kind == "command" and type(body) is tuple and len(body) == 2
            and type(atype) is str and type(aid) is str and type(cid) is str
            and type(body[0]) is str and type(body[1]) is str
            and (expected is None or (type(expected) is int and 0 <= expected <= INT64_MAX))
            and 0 < len(atype) <= ids and 0 < len(aid) <= ids and 0 < len(cid) <= ids and 0 < len(body[0]) <= ids
            and len(body[1]) <= config.max_event_bytes
            and atype.isascii() and aid.isascii() and cid.isascii() and body[0].isascii() and body[1].isascii()
        ):
            if meta is None:
                return item  # type: ignore[return-value]
            checked = _check_meta(meta, config)
            return item if checked is meta else (kind, atype, aid, cid, expected, body, checked)  # type: ignore[return-value]
    elif not isinstance(item, (tuple, list)) or len(item) != 7:
        raise InvalidPayload(
            "a batch item must be (kind, aggregate_type, aggregate_id, command_id, expected_version, body, meta)"
        )
    kind, atype, aid, cid, expected, body, meta = item
    if type(kind) is not str or kind not in KINDS:
        raise InvalidPayload(f"unknown batch item kind {kind!r:.60}; known: {KINDS}")
    ids = config.max_id_bytes
    atype = check_text(atype, "aggregate_type", ids, "max_id_bytes", empty=False)
    aid = check_text(aid, "aggregate_id", ids, "max_id_bytes", empty=False)
    cid = check_text(cid, "command_id", ids, "max_id_bytes", empty=False)
    if expected is not None:
        if type(expected) is not int:
            if isinstance(expected, bool) or not isinstance(expected, int):
                raise InvalidPayload(f"expected_version must be an int or None, not {type(expected).__name__}")
            expected = int(expected)
        if not 0 <= expected <= INT64_MAX:
            raise InvalidPayload(f"expected_version must be in 0..2**63-1, not {expected}")
    body = _check_body(kind, body, config)
    if meta is not None:
        meta = _check_meta(meta, config)
    return (kind, atype, aid, cid, expected, body, meta)
