"""Idempotency by command id: what an accepted command did, remembered per aggregate (the
last ``dedup_window`` ids), so a retry is answered with the first run's result instead of
being applied twice, and a reused id with another command is refused.

The record of a passivated aggregate is read back from the log (its last events' command id,
digest and principal) the first time it is needed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from es_actors.storage.api import OwnedPartitionLog
from es_actors.write.protocol import BatchItem, BatchResults, CommandEnvelope, ImportEnvelope, ItemResult

if TYPE_CHECKING:
    from es_actors.write.partition.index import AggregateEntry


@dataclass(slots=True)
class Remembered:
    """What an accepted command did, kept so its retry returns the same result."""

    digest: str
    version: int
    first_position: int
    count: int
    principal: str | None = None  # who sent it (an interceptor may refuse a retry by someone else)


@dataclass(slots=True)
class Duplicate:
    """A retry found in the dedup record; its rows are read back once the batch is done."""

    version: int
    first_position: int
    count: int


def command_digest(envelope: BatchItem) -> str:
    """Fingerprint of what a command asks, to tell a retry from a reused id.

    Payloads arrive as the JSON pydantic serialized them (fields in declaration order), so
    the same command always hashes the same without re-encoding it here. (The text hashed is
    the one of the stored digests: a retry after an upgrade is still recognised.)
    """
    if type(envelope) is CommandEnvelope:
        return command_digest_of(envelope.command_type, envelope.payload)
    assert type(envelope) is ImportEnvelope
    text = "import\x00" + json.dumps([[e.event_type, e.payload, e.occurred_at] for e in envelope.events])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def command_digest_of(command_type: str, payload: str) -> str:
    """:func:`command_digest` of a command (for tools that write logs directly)."""
    return hashlib.blake2b(f"command\x00{command_type}\x00{payload}".encode(), digest_size=12).hexdigest()


def recent_commands(log: OwnedPartitionLog, entry: "AggregateEntry", window: int) -> dict[str, Remembered]:
    """The aggregate's recent command ids (the dedup window), read from the log the first time
    they are needed; consecutive events of one command fold into one record."""
    if entry.commands is None:
        entry.commands = {}
        if entry.version:
            cols = log.read_at(entry.positions[-window:], ["position", "version", "command_id", "command_digest", "principal"])
            for pos, version, cid, digest, principal in zip(
                cols["position"], cols["version"], cols["command_id"], cols["command_digest"], cols["principal"]
            ):
                rec = entry.commands.get(cid)
                if rec is not None and rec.version == version - 1 and rec.first_position + rec.count == pos:
                    rec.version, rec.count = version, rec.count + 1
                else:
                    entry.remember(cid, Remembered(digest, version, pos, 1, principal), window)
    return entry.commands


def resolve_duplicates(log: OwnedPartitionLog, results: Sequence[ItemResult | Duplicate | None]) -> tuple[BatchResults, int]:
    """Every result final: a retried command gets the rows its first run appended, read back
    from the log. Returns the results and how many were duplicates."""
    out = BatchResults()
    duplicates = 0
    for r in results:
        if type(r) is Duplicate:
            rows = log.read_positions(r.first_position, r.first_position + r.count - 1)
            out.append(ItemResult(r.version, rows, duplicate=True))
            duplicates += 1
        else:
            assert type(r) is ItemResult
            out.append(r)
    return out, duplicates
