"""Positions a repair declared lost, recorded in the store so every reader accepts the gap knowingly.

A damaged frame or segment is never cut silently (ADR-009). ``es-actors repair`` moves the
damage to ``quarantine/``, keeps every valid frame and row group, and records here, in
``<store>/lost-ranges.json``, each position range it could not keep: which file and byte
offset it came from, where the damaged bytes went, which aggregates and versions are known
to be affected, and whether an operator has accepted the loss. Readers, the owner's index,
projections and subscriptions accept a gap in positions only where a range here covers it;
any other gap is corruption.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, Field, model_validator

from es_actors.errors import StoreCorrupted, invalid_file
from es_actors.storage.files import fsync_dir, replace_durably

FILE_NAME = "lost-ranges.json"


class AffectedAggregate(BaseModel):
    aggregate_type: str
    aggregate_id: str
    versions: list[int] = Field(default_factory=list, description="Versions known lost (may be empty: unknown).")
    evidence: str = Field(description="'version gap' (surviving events skip versions) or 'damaged bytes' (unverified).")


class Acceptance(BaseModel):
    accepted_at: str
    principal: str
    reason: str


class LostRange(BaseModel):
    partition: int
    first: int
    last: int
    source: str = Field(description="The damaged file, relative to the store.")
    offset: int = Field(description="Byte offset of the damage in that file (0 for a whole segment).")
    quarantined: str = Field(description="Where the damaged bytes were moved, relative to the store.")
    detail: str
    aggregates: list[AffectedAggregate] = Field(default_factory=list)
    aggregates_complete: bool = Field(
        False, description="True only if every aggregate with events in the range is known (then only they stop)."
    )
    recorded_at: str
    accepted: Acceptance | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "LostRange":
        if not 1 <= self.first <= self.last:
            raise ValueError(f"lost range {self.first}..{self.last} is not 1 <= first <= last")
        return self


class LostRangesFile(BaseModel):
    format: int = 1
    ranges: list[LostRange] = Field(default_factory=list)


class LostRanges:
    """The recorded lost ranges of a store, by partition, for gap checks on every read path."""

    def __init__(self, ranges: list[LostRange] | None = None) -> None:
        self.ranges = sorted(ranges or [], key=lambda r: (r.partition, r.first))
        self._by_partition: dict[int, list[LostRange]] = {}
        for r in self.ranges:
            self._by_partition.setdefault(r.partition, []).append(r)

    @classmethod
    def load(cls, root: Path) -> "LostRanges":
        path = root / FILE_NAME
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise StoreCorrupted(f"{path}: the record of lost positions cannot be read ({exc})") from None
        try:
            return cls(LostRangesFile.model_validate_json(text).ranges)
        except ValueError as exc:
            raise StoreCorrupted(f"{path}: the record of lost positions cannot be read: {invalid_file(exc)}") from None

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def of(self, partition: int | None) -> list[LostRange]:
        return self._by_partition.get(partition, []) if partition is not None else []

    def covers(self, partition: int | None, first: int, last: int) -> bool:
        """Every position first..last lies in recorded lost ranges of this partition."""
        want = first
        for r in self.of(partition):
            if r.first <= want <= r.last:
                want = r.last + 1
                if want > last:
                    return True
        return want > last

    def first_gap(self, partition: int | None, after: int, positions: Iterable[int]) -> tuple[int, int] | None:
        """Where ``positions`` stop continuing ``after`` one by one other than across a recorded
        loss, as (expected, found); None if they continue (the one rule of every read path)."""
        expected = after + 1
        for pos in positions:
            if pos != expected and not (pos > expected and self.covers(partition, expected, pos - 1)):
                return expected, pos
            expected = pos + 1
        return None

    def skip(self, partition: int | None, after: int) -> int:
        """The last position of lost ranges that start right after ``after`` (else ``after``)."""
        for r in self.of(partition):
            if r.first <= after + 1 <= r.last:
                after = r.last
        return after

    def lost_count(self, partition: int | None, first: int, last: int) -> int:
        """How many positions of first..last are recorded lost."""
        return sum(max(0, min(r.last, last) - max(r.first, first) + 1) for r in self.of(partition))

    def unresolved(self, partition: int) -> list[LostRange]:
        return [r for r in self.of(partition) if r.accepted is None]


def record_lost_ranges(root: Path, new: list[LostRange]) -> None:
    """Add ranges to ``lost-ranges.json`` durably (temp, fsync, rename, fsync the directory)."""
    existing = LostRanges.load(root).ranges
    keys = {(r.partition, r.first, r.last) for r in existing}
    merged = existing + [r for r in new if (r.partition, r.first, r.last) not in keys]
    write_lost_ranges(root, merged)


def write_lost_ranges(root: Path, ranges: list[LostRange]) -> None:
    body = LostRangesFile(ranges=sorted(ranges, key=lambda r: (r.partition, r.first))).model_dump()
    replace_durably(root / FILE_NAME, json.dumps(body, indent=2).encode())
    fsync_dir(root)


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
