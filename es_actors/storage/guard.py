"""One boundary for storage faults: what the file system or Parquet reader raises becomes a
:class:`StoreCorrupted` naming what failed, so no read path leaks a raw ``OSError`` or pyarrow error."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import pyarrow as pa

from es_actors.errors import EsActorsError, StoreCorrupted

F = TypeVar("F", bound=Callable[..., Any])


def storage_boundary(what: str) -> Callable[[F], F]:
    """Decorate a public storage entry point (reads, follow, repair): es_actors errors pass through;
    ``OSError`` (a file that is a directory, unreadable, gone for good) and pyarrow errors are
    reported as ``StoreCorrupted`` naming the path and the operation."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except EsActorsError:
                raise
            except (OSError, pa.ArrowException) as exc:
                where = getattr(exc, "filename", None)
                raise StoreCorrupted(
                    f"{what} failed{f' on {where}' if where else ''}: {type(exc).__name__}: {exc}"
                ) from None

        return inner  # type: ignore[return-value]

    return wrap
