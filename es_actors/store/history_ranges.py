"""Range reads of one aggregate's history: the arguments' rules and paging.

``from_version`` / ``to_version`` bound the versions (inclusive; ``to_version=None``: no upper
bound); ``limit`` caps the stored events returned (``None``: no cap; ``0``: none, and nothing is
read); ``backwards`` returns newest first (``limit`` then takes the newest). Bad arguments raise
:class:`~es_actors.errors.EsActorsError` naming the argument before anything is read.
:func:`iter_history_rows` streams a long history page by page (each page a version-bounded read),
so a 1M-event aggregate is never held in memory whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from es_actors.codecs.rows import COL, INT64_MAX
from es_actors.errors import EsActorsError

Row = tuple[Any, ...]
_VER = COL["version"]
# (first_version, last_version, limit, backwards) -> rows sorted by version in that direction
ReadRows = Callable[[int, "int | None", "int | None", bool], list[Row]]




def _whole(value: Any, name: str, minimum: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise EsActorsError(f"{name} must be an int{' or None' if optional else ''}, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise EsActorsError(f"{name} must be >= {minimum}, not {value}")
    if value > INT64_MAX:
        raise EsActorsError(f"{name} must be <= 2**63-1 (versions are 64-bit), not {value}")


@dataclass(frozen=True, slots=True)
class HistoryRange:
    """Checked arguments of a range read."""

    from_version: int = 1
    to_version: int | None = None
    limit: int | None = None
    backwards: bool = False

    @property
    def empty(self) -> bool:
        """Nothing can match: answer without reading."""
        return self.limit == 0


def check_history_range(from_version: Any = 1, to_version: Any = None, limit: Any = None,
                        backwards: Any = False) -> HistoryRange:
    """The arguments as a :class:`HistoryRange`; EsActorsError naming the first bad one."""
    _whole(from_version, "from_version", 1, optional=False)
    _whole(to_version, "to_version", 0, optional=True)
    _whole(limit, "limit", 0, optional=True)
    if not isinstance(backwards, bool):
        raise EsActorsError(f"backwards must be True or False, not {type(backwards).__name__} {backwards!r}")
    if to_version is not None and from_version > to_version:
        raise EsActorsError(f"from_version ({from_version}) is greater than to_version ({to_version})")
    return HistoryRange(from_version, to_version, limit, backwards)


def check_version(version: Any) -> int:
    """A version to read up to (``state_at(version=)``): an int >= 0."""
    _whole(version, "version", 0, optional=False)
    return int(version)


def check_page_size(page_size: Any) -> int:
    _whole(page_size, "page_size", 1, optional=False)
    return int(page_size)


def iter_history_rows(read: ReadRows, rng: HistoryRange, page_size: int) -> Iterator[Row]:
    """Rows of the range, ``page_size`` per read, in version order (newest first if backwards).
    Each page is a read bounded by the versions already returned; ``rng.limit`` caps the total."""
    remaining = rng.limit
    lo, hi = rng.from_version, rng.to_version
    while remaining is None or remaining > 0:
        want = page_size if remaining is None else min(page_size, remaining)
        page = read(lo, hi, want, rng.backwards)
        yield from page
        if remaining is not None:
            remaining -= len(page)
        if len(page) < want:
            return
        if rng.backwards:
            hi = page[-1][_VER] - 1
            if hi < lo:
                return
        else:
            lo = page[-1][_VER] + 1
            if hi is not None and lo > hi:
                return
