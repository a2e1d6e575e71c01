"""The objects of the whole-object backend and their checked encoding.

Every object is ``ESOB1`` + u32 length + JSON body + u32 CRC-32 of the body, so a reader
tells a whole object from one still being written or torn by a crash (:class:`Incomplete`).

Per partition ``pNNNN/``:

- ``owners/<epoch>``: an owner's claim (epochs are claimed as highest + 1 with put-if-absent);
- ``tail/<slot>``: one group commit (``kind="rows"``), or the first object a new owner writes
  (``kind="start"``: slots after ``after_slot`` and before it are void: torn, or written by a
  fenced owner after the takeover and never acknowledged);
- ``gens/<n>``: a manifest: the sealed segments and the last tail slot they hold; the
  highest whole one is current;
- ``segs/<n>-<first>-<last>.parquet``: a sealed segment (its CRC-32 in the manifest).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

_MAGIC = b"ESOB1"
_LEN = struct.Struct("<I")


class Incomplete(Exception):
    """The object is being written, or a crash tore it: it holds nothing yet."""


def encode(body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return _MAGIC + _LEN.pack(len(data)) + data + _LEN.pack(zlib.crc32(data))


def decode(blob: bytes) -> dict[str, Any]:
    head = len(_MAGIC) + _LEN.size
    if len(blob) < head or not blob.startswith(_MAGIC):
        raise Incomplete("no whole header")
    (n,) = _LEN.unpack_from(blob, len(_MAGIC))
    if len(blob) != head + n + _LEN.size:
        raise Incomplete(f"{len(blob)} bytes where the header says {head + n + _LEN.size}")
    data = blob[head : head + n]
    if zlib.crc32(data) != _LEN.unpack_from(blob, head + n)[0]:
        raise Incomplete("checksum mismatch")
    body: dict[str, Any] = json.loads(data)
    return body


def key_number(key: str) -> int:
    return int(key.rsplit("/", 1)[1].split("-", 1)[0].split(".", 1)[0])


def partition_prefix(partition: int) -> str:
    return f"p{partition:04d}/"


def slot_key(partition: int, slot: int) -> str:
    return f"{partition_prefix(partition)}tail/{slot:020d}"


def owner_key(partition: int, epoch: int) -> str:
    return f"{partition_prefix(partition)}owners/{epoch:020d}"


def gen_key(partition: int, gen: int) -> str:
    return f"{partition_prefix(partition)}gens/{gen:020d}"


def segment_key(partition: int, gen: int, first: int, last: int) -> str:
    return f"{partition_prefix(partition)}segs/{gen:020d}-{first:020d}-{last:020d}.parquet"


@dataclass(frozen=True, slots=True)
class Commit:
    """A whole tail object."""

    slot: int
    kind: str  # "rows" | "start"
    epoch: int
    first: int  # the first position it holds (rows) or the next position (start)
    rows: tuple[tuple[Any, ...], ...] = ()
    after_slot: int = 0  # start: the last slot the new owner adopted

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1

    def encode(self) -> bytes:
        return encode({"slot": self.slot, "kind": self.kind, "epoch": self.epoch, "first": self.first,
                       "rows": list(self.rows), "after_slot": self.after_slot})

    @staticmethod
    def decode(blob: bytes) -> "Commit":
        b = decode(blob)
        return Commit(b["slot"], b["kind"], b["epoch"], b["first"], tuple(tuple(r) for r in b["rows"]), b["after_slot"])


@dataclass(frozen=True, slots=True)
class SegmentRef:
    key: str
    first: int
    last: int
    crc: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """What is sealed: segments in position order, up to tail slot ``through_slot``."""

    gen: int = 0
    segments: tuple[SegmentRef, ...] = ()
    through_slot: int = 0
    epoch: int = 0

    @property
    def last_position(self) -> int:
        return self.segments[-1].last if self.segments else 0

    def encode(self) -> bytes:
        return encode({"gen": self.gen, "through_slot": self.through_slot, "epoch": self.epoch,
                       "segments": [[s.key, s.first, s.last, s.crc] for s in self.segments]})

    @staticmethod
    def decode(blob: bytes) -> "Manifest":
        b = decode(blob)
        return Manifest(b["gen"], tuple(SegmentRef(*s) for s in b["segments"]), b["through_slot"], b["epoch"])


@dataclass
class Listing:
    """One look at a partition: the current manifest and the tail objects after it."""

    manifest: Manifest
    highest_gen: int  # including a manifest still being written
    slots: dict[int, Commit | None] = field(default_factory=dict)  # None: incomplete
