"""The aggregate index: every aggregate a partition owns, its version and event positions,
built at start-up from four columns of the log (type, id, version, position).

No payload is decoded and no state is built here: states hydrate on first use
(hydration.py). The build checks what the log promises (positions gapless except across a
loss a repair recorded, each aggregate's versions 1..n in position order).
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from es_actors.errors import StoreCorrupted
from es_actors.storage.api import OwnedPartitionLog
from es_actors.write.partition.dedup import Remembered

Key = tuple[str, str]  # (aggregate_type, aggregate_id)

NOT_HYDRATED: Any = object()


class AggregateEntry:
    """Every aggregate the partition knows: its version and event positions always; its state
    and recent command ids only while hydrated (at most ``max_hydrated`` of them)."""

    __slots__ = ("version", "positions", "state", "commands", "snap_version", "snap_event")

    def __init__(self, version: int = 0, positions: "array[int] | None" = None) -> None:
        self.version = version
        self.positions: array[int] = positions if positions is not None else array("q")
        self.state: Any = NOT_HYDRATED
        self.commands: dict[str, Remembered] | None = None  # None: not loaded (lazily, from the log)
        self.snap_version = 0  # version of the newest snapshot known to exist (-1: a stale one, replace it)
        self.snap_event: tuple[int, str] | None = None  # (version, id of the log's event there), once read

    def remember(self, command_id: str, rec: Remembered, window: int) -> None:
        assert self.commands is not None
        self.commands.pop(command_id, None)
        self.commands[command_id] = rec
        if len(self.commands) > window:
            del self.commands[next(iter(self.commands))]

    def passivate(self) -> None:
        """Drop the state and command ids (the index part stays)."""
        self.state, self.commands = NOT_HYDRATED, None

    def position_at(self, version: int) -> int | None:
        """The log position of this aggregate's event at ``version``, None if it has no such version."""
        return self.positions[version - 1] if 1 <= version <= self.version else None


def _names_of(encoded: Any, code: int) -> str:
    return str(encoded.dictionary[int(code)].as_py()).replace("\x00", "/")


def build_index(log: OwnedPartitionLog, partition: int) -> tuple[dict[Key, AggregateEntry], set[Key]]:
    """Every aggregate of the log (version and positions), and those cut short by a recorded
    loss (readable up to the gap; they refuse commands)."""
    aggregates: dict[Key, AggregateEntry] = {}
    frozen: set[Key] = set()
    table = log.index_columns()
    n = table.num_rows
    if n == 0:
        return aggregates, frozen
    positions = table.column("position").to_numpy()
    steps = np.diff(np.concatenate([[0], positions]))
    for bad in np.flatnonzero(steps != 1).tolist():  # only across a loss a repair recorded
        before = int(positions[bad - 1]) if bad else 0
        if not (steps[bad] > 1 and log.lost.covers(partition, before + 1, int(positions[bad]) - 1)):
            raise StoreCorrupted(f"partition {partition}: position {positions[bad]} follows {before}")
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
            if not log.lost.of(partition):
                raise StoreCorrupted(
                    f"partition {partition}: {_names_of(encoded, sorted_codes[i])}: version {versions[i]} "
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
            frozen.add((atype, aid))
        aggregates[(atype, aid)] = AggregateEntry(b - a, array("q", sorted_pos[a:b].tobytes()))
    del table, keys, encoded, codes, order, sorted_codes, group, versions, expected, sorted_pos, names
    pa.default_memory_pool().release_unused()  # the Arrow buffers of the scan: back to the OS
    return aggregates, frozen
