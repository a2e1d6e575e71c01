"""``store.query``: read-only SQL over the read models and ``events``, run in the store's
projector when one runs, else in this process; the result as Arrow, pandas or polars."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from es_actors.errors import EsActorsError

if TYPE_CHECKING:
    from es_actors.store.facade import Store

#: How long past a query's timeout the caller waits for the projector's answer (queueing
#: behind other calls, moving the result) before it gives up.
QUERY_ANSWER_GRACE_S = 10.0


def query_store(
    store: "Store",
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None,
    timeout: float | None,
    output: str,
) -> Any:
    """See :meth:`es_actors.store.Store.query`."""
    from es_actors.read.queries import query_request

    req = query_request(sql, params, timeout, store.config)  # refused here, before any call
    projector = store.projections.running()
    if projector is not None:
        table = _query_projector(store, projector, req)
    else:
        table = _query_here(store, req)
    return convert_table(table, output)


def _query_projector(store: "Store", projector: Any, req: Any) -> Any:
    import ray

    from es_actors.errors import QueryTimeout

    wait_s = req.timeout_s + QUERY_ANSWER_GRACE_S
    try:
        return store.projections.call("query", req.sql, req.timeout_s, req.params, projector=projector, wait_s=wait_s)
    except ray.exceptions.GetTimeoutError:
        raise QueryTimeout(
            f"no answer from the projector within {wait_s:.1f} s (query timeout {req.timeout_s} s)"
        ) from None


def _query_here(store: "Store", req: Any) -> Any:
    import duckdb

    from es_actors.errors import QueryFailed
    from es_actors.read.queries import run_query
    from es_actors.read.readmodel import connect_restricted, readmodel_path
    from es_actors.read.readmodel.database import open_error
    from es_actors.read.events_relation import LogEvents

    path = readmodel_path(store.layout.read_model_root)
    con, held = None, False
    if path.exists():
        try:
            con = connect_restricted(str(path), store.layout.read_model_root, read_only=True)
        except duckdb.Error as exc:  # held by a projector this process cannot reach: events only
            if "lock" not in str(exc).lower():
                raise open_error(path, exc) from None  # corrupt, say: named, not taken for a projector's
            con, held = None, True
    con = con or connect_restricted(":memory:", store.layout.read_model_root)
    try:
        return run_query(con.cursor(), req, LogEvents(store.layout, store.descriptor.partitions))
    except QueryFailed as exc:
        if held:
            raise type(exc)(
                f"{exc} (only `events` is readable here: the read models are held by a running projector; "
                "join its Ray cluster, e.g. --address or RAY_ADDRESS)"
            ) from None
        raise
    finally:
        con.close()


def convert_table(table: Any, output: str) -> Any:
    """An Arrow table as ``output`` asks: "arrow" (as is), "pandas" or "polars"."""
    if output == "arrow":
        return table
    if output == "pandas":
        try:
            import pandas  # noqa: F401 - pyarrow's to_pandas needs it, and says so less clearly
        except ImportError:
            raise EsActorsError("output='pandas' needs the pandas package installed") from None
        return table.to_pandas()
    if output == "polars":
        try:
            import polars as pl
        except ImportError:
            raise EsActorsError("output='polars' needs the polars package installed") from None
        return pl.from_arrow(table)
    raise EsActorsError(f"output must be 'arrow', 'pandas' or 'polars', not {output!r}")
