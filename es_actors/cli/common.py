"""What the command families share: the common options, loading ``--aggregates``, a plain
text table, progress on stderr, and opening a store read-only (joining its Ray if asked)."""

from __future__ import annotations

import sys
from typing import Any

import click

from es_actors.jobs.options import DEFAULT_AGGREGATES, address_option, aggregates_option, load_aggregates

__all__ = ["DEFAULT_AGGREGATES", "address_option", "aggregates_option", "load_aggregates", "reading_store", "reporter", "text_table"]


def text_table(headers: list[str], rows: list[list[Any]], right: frozenset[int] | set[int] = frozenset()) -> list[str]:
    """Rows as aligned text lines under a header and a rule (columns in ``right`` right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(cells[0]).rstrip(), "  ".join("-" * w for w in widths)] + [fmt(r).rstrip() for r in cells[1:]]


def reporter(describe: Any) -> Any:
    """A job's ``progress=``: a bar on a terminal, else one line per partition on stderr."""
    if sys.stderr.isatty():
        return True
    return lambda report: click.echo(describe(report), err=True)


def reading_store(store_path: str, address: str | None) -> Any:
    """A read-only store; joined to the Ray cluster at ``address`` (or $RAY_ADDRESS) when given,
    so queries and status come from the store's running projector."""
    from es_actors.store import Store
    from es_actors.errors import EsActorsError
    from es_actors.runtime.cluster import join_ray

    join_ray(address)
    try:
        return Store.open(store_path, read_only=True)
    except EsActorsError as exc:
        raise click.ClickException(str(exc)) from None
