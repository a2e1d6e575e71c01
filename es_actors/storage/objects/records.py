"""The objects of the whole-object backend and their checked encoding.

Every object is ``ESOB1`` + u32 length + JSON body + u32 CRC-32 of the body. Whether an object
is whole is the blob store's answer (``ObjectIncomplete`` while it is being written or after a
crash tore it); an object the store returns whole that fails these checks is *damage*
(:class:`Damaged`), never a write in flight: refusing it keeps an acknowledged commit from being
silently voided.

Names: tail slots, owners and manifests are exactly 20 digits; names starting with ``.`` are
foreign (``.DS_Store``, editor swap files) and ignored; any other name under a partition's
``tail/``, ``owners/`` or ``gens/`` is refused (:func:`numbered_keys`): it may be one of our
objects renamed, and ignoring it could hide a lost commit.

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
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from es_actors.errors import StoreCorrupted
from es_actors.storage.api import BlobStore

_MAGIC = b"ESOB1"
_LEN = struct.Struct("<I")


class Damaged(Exception):
    """A whole object (the blob store returned it) whose header, length, checksum or body is wrong."""


def encode(body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return _MAGIC + _LEN.pack(len(data)) + data + _LEN.pack(zlib.crc32(data))


def decode(blob: bytes) -> dict[str, Any]:
    head = len(_MAGIC) + _LEN.size
    if len(blob) < head or not blob.startswith(_MAGIC):
        raise Damaged(f"no valid header ({blob[:len(_MAGIC)]!r} where {_MAGIC!r} belongs)")
    (n,) = _LEN.unpack_from(blob, len(_MAGIC))
    if len(blob) != head + n + _LEN.size:
        raise Damaged(f"{len(blob)} bytes where its header says {head + n + _LEN.size}")
    data = blob[head : head + n]
    if zlib.crc32(data) != _LEN.unpack_from(blob, head + n)[0]:
        raise Damaged("CRC-32 mismatch: its body changed after it was written")
    try:
        body: dict[str, Any] = json.loads(data)
    except ValueError as exc:
        raise Damaged(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Damaged("body is not a JSON object")
    return body


_NUMBER = re.compile(r"\d{20}")


def key_number(key: str) -> int:
    """The number of a ``tail/``, ``owners/`` or ``gens/`` key (or a segment's generation)."""
    return int(key.rsplit("/", 1)[1].split("-", 1)[0].split(".", 1)[0])


def numbered_keys(blobs: BlobStore, prefix: str) -> list[str]:
    """The backend's own numbered objects under ``prefix``, in number order. Dot-names are foreign
    and skipped; any other name is :class:`StoreCorrupted` naming it (nothing is changed)."""
    keys = []
    for key in blobs.list(prefix):
        name = key.rsplit("/", 1)[1]
        if name.startswith("."):
            continue
        if not _NUMBER.fullmatch(name):
            raise StoreCorrupted(
                f"{key}: not an object of this store (names under {prefix} are 20 digits); nothing was changed. "
                "If it is one of the store's objects renamed, give it back its name; otherwise move it out "
                "(names starting with '.' are ignored)"
            )
        keys.append(key)
    return keys


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
        try:
            return Commit(b["slot"], b["kind"], b["epoch"], b["first"], tuple(tuple(r) for r in b["rows"]),
                          b["after_slot"])
        except (KeyError, TypeError) as exc:
            raise Damaged(f"not a tail commit: {type(exc).__name__}: {exc}") from None


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
        try:
            return Manifest(b["gen"], tuple(SegmentRef(*s) for s in b["segments"]), b["through_slot"], b["epoch"])
        except (KeyError, TypeError) as exc:
            raise Damaged(f"not a manifest: {type(exc).__name__}: {exc}") from None


@dataclass
class Listing:
    """One look at a partition: the current manifest and the tail objects after it."""

    manifest: Manifest
    highest_gen: int  # including a manifest still being written
    slots: dict[int, Commit | None] = field(default_factory=dict)  # None: incomplete
