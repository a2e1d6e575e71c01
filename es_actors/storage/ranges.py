"""The arguments of a position-range read, checked once for every backend.

Positions are int64 in the log: a range is clamped to ``1..2**63-1`` (``last`` beyond it means "to
the end"); anything that is not an int (a bool included) is an EsActorsError naming the argument,
never an error that reads like damage.
"""

from __future__ import annotations

from typing import Any

from es_actors.codecs.rows import INT64_MAX
from es_actors.errors import EsActorsError



def position_range(first: Any, last: Any) -> tuple[int, int] | None:
    """``(first, last)`` clamped to the positions a log can hold, or None if the range is empty."""
    for name, value in (("first", first), ("last", last)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise EsActorsError(f"a position range's {name} must be an int, not {type(value).__name__} {value!r}")
    first, last = max(first, 1), min(last, INT64_MAX)
    return (first, last) if first <= last else None
