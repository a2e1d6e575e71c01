"""Reading format-1 tail files (no file header, frames ``<u32 len><u32 crc32><JSON rows>``).

Kept apart from :mod:`es_actors.storage.wal` because only readers and ``es-actors upgrade`` need
it: a writer refuses a format-1 store until it is upgraded (ADR-009)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

from es_actors.storage.local.wal import Damage, Frame, TailScan

Row = tuple[Any, ...]
_V1_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload

def _v1_frame_at(data: bytes, off: int) -> tuple[int, list[Row]] | None:
    n = len(data)
    if off + _V1_HEADER.size > n:
        return None
    length, crc = _V1_HEADER.unpack_from(data, off)
    start, end = off + _V1_HEADER.size, off + _V1_HEADER.size + length
    if length == 0 or end > n or zlib.crc32(data[start:end]) != crc:
        return None
    try:
        rows = [tuple(r) for r in json.loads(data[start:end])]
    except (ValueError, TypeError):
        return None
    return (end, rows) if rows else None


def scan_v1(path: Path, data: bytes, newest: bool, expected_first: int | None) -> TailScan:
    """Format-1 frames (no marker): a bad frame followed by one that checks out (found by
    trying every later offset) is damage, as in format 2."""
    scan = TailScan(path, 1, len(data))
    off, n = 0, len(data)
    expected = expected_first
    while off < n:
        got = _v1_frame_at(data, off)
        if got is not None and (expected is None or got[1][0][1] == expected):
            end, rows = got
            scan.frames.append(Frame(off, end, rows[0][1], rows))
            expected = rows[-1][1] + 1
            off = end
            if not scan.damage:
                scan.valid_end = off
            continue
        resumed = False
        for k in range(off + 1, n - _V1_HEADER.size):
            later = _v1_frame_at(data, k)
            if later is not None and (expected is None or later[1][0][1] > expected - 1):
                first_lost = expected if expected is not None else 0
                scan.damage.append(Damage(path, off, k, first_lost, later[1][0][1] - 1,
                                          "format-1 frame fails its checksum; valid frames follow"))
                off, expected, resumed = k, later[1][0][1], True
                break
        if resumed:
            continue
        if newest:
            scan.torn_bytes = n - off
        else:
            scan.damage.append(Damage(path, off, None, expected or 0, None, "format-1 frame fails its checksum in a closed tail file"))
        return scan
    return scan
