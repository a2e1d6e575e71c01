"""Running one read-only query: its arguments, its deadline, its result cap (ADR-010).

The same code runs a query in the projector (on its own cursor, concurrent with projection)
and in the caller's process (no projector): checked first by :mod:`es_actors.query_guard`
(nothing of it runs before), then run in a transaction that is rolled back, cancelled at its
deadline, and streamed in Arrow batches so a result past the cap stops early instead of
filling memory.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from es_actors.config import StoreConfig
from es_actors.errors import QueryFailed, QueryRefused, QueryTimeout, QueryTooLarge
from es_actors.read.events_relation import EventsSource, aggregate_filter
from es_actors.read.query_guard import check_query

_BATCH_ROWS = 65_536
_REPEAT_INTERRUPT_S = 0.05

Params = list[Any] | dict[str, Any] | None


class QueryRequest(BaseModel):
    """A query with everything that bounds it, validated where it is made (client or actor)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sql: Annotated[str, Field(strict=True)]
    params: Params = None
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
    max_rows: Annotated[int, Field(ge=1, strict=True)]
    max_bytes: Annotated[int, Field(ge=1, strict=True)]


def query_request(sql: str, params: Any, timeout: float | None, config: StoreConfig) -> QueryRequest:
    """``timeout=None`` is the configured ``query_timeout_s``; any other value must be a finite
    number of seconds > 0 (0, negative, inf and NaN are refused: no query runs unbounded).
    ``params``: a list for ``?``/``$1`` placeholders or a dict for ``$name``; values are bound,
    never spliced into the SQL."""
    if isinstance(params, tuple):
        params = list(params)
    if isinstance(sql, str):
        try:
            size = len(sql.encode("utf-8"))
        except UnicodeEncodeError:
            raise QueryRefused("the query text is not valid UTF-8 (a lone surrogate)") from None
        if size > config.query_max_sql_bytes:
            # DuckDB's parser holds the GIL and cannot be interrupted: a huge text would freeze the
            # projector past any timeout, so it is refused before it is parsed.
            raise QueryRefused(
                f"the query text is {size} bytes, over query_max_sql_bytes={config.query_max_sql_bytes}"
            )
    try:
        return QueryRequest(
            sql=sql,
            params=params,
            timeout_s=config.query_timeout_s if timeout is None else timeout,
            max_rows=config.query_max_rows,
            max_bytes=config.query_max_bytes,
        )
    except ValidationError as exc:
        what = "; ".join(f"{'.'.join(map(str, e['loc'][:1])) or 'query'}: {e['msg']}" for e in exc.errors())
        raise QueryRefused(
            f"invalid query arguments ({what}); timeout is seconds > 0 or None for the default "
            f"({config.query_timeout_s} s), params a list or a dict of names"
        ) from None


class _Deadline:
    """Interrupts the cursor at the deadline, then again every 50 ms until the query has ended:
    DuckDB drops an interrupt that arrives between two statements, and one that arrives while
    the query is being planned would otherwise be lost."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, timeout_s: float) -> None:
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cur, timeout_s), name="query-deadline", daemon=True)
        self._thread.start()

    def _run(self, cur: duckdb.DuckDBPyConnection, timeout_s: float) -> None:
        if self._done.wait(timeout_s):
            return
        self.fired = True
        while not self._done.is_set():
            try:
                cur.interrupt()
            except Exception:  # the cursor closed meanwhile
                return
            self._done.wait(_REPEAT_INTERRUPT_S)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def run_query(
    cur: duckdb.DuckDBPyConnection,
    req: QueryRequest,
    events: EventsSource,
    defined: frozenset[str] | None = None,
) -> pa.Table:
    """The query on its own cursor, with ``events`` = sealed files + durable tail rows, or only
    one aggregate's rows when the query has the form :func:`aggregate_filter` finds (the same
    answer, without a scan). ``defined``: the database's own functions, when the caller keeps
    them (see check_query)."""
    t0 = time.monotonic()
    deadline = _Deadline(cur, req.timeout_s)
    began = False
    try:
        tree = check_query(cur, req.sql, defined)
        aggregate = aggregate_filter(tree, req.params)
        if aggregate is not None:
            cur.register("_es_tail", events.aggregate(*aggregate))
            sealed = ""
        else:
            events_sealed, events_tail = events.everything()
            cur.register("_es_tail", events_tail)
            if isinstance(events_sealed, list):  # local Parquet files
                sealed = (
                    f"SELECT * FROM read_parquet([{', '.join(_sql_str(f) for f in events_sealed)}]) UNION ALL BY NAME "
                    if events_sealed
                    else ""
                )
            elif events_sealed is not None:  # a pyarrow dataset (object storage): pyarrow reads what is needed
                cur.register("_es_sealed", events_sealed)
                sealed = "SELECT * FROM _es_sealed UNION ALL BY NAME "
            else:
                sealed = ""
        cur.execute(f"CREATE OR REPLACE TEMP VIEW events AS {sealed}SELECT * FROM _es_tail")
        cur.execute("BEGIN")
        began = True
        return _collect(_reader(cur, req.sql, req.params), req)
    except (duckdb.Error, pa.ArrowException, OSError) as exc:  # streamed batches fail as pyarrow errors
        if deadline.fired:
            raise QueryTimeout(
                f"query cancelled after {time.monotonic() - t0:.1f} s (timeout {req.timeout_s} s)"
            ) from None
        if isinstance(exc, duckdb.PermissionException):
            raise QueryRefused(f"{exc} (queries may read files under the store only)") from None
        raise QueryFailed(str(exc)) from None
    finally:
        deadline.stop()
        if began:
            try:
                cur.execute("ROLLBACK")
            except duckdb.Error:
                pass


def _reader(c: duckdb.DuckDBPyConnection, q: str, p: Params) -> pa.RecordBatchReader:
    # No table-like local here: DuckDB's Python replacement scan looks up unknown table names
    # among the calling frame's variables.
    return c.sql(q, params=p).to_arrow_reader(_BATCH_ROWS)


def _collect(reader: pa.RecordBatchReader, req: QueryRequest) -> pa.Table:
    """The result, or QueryTooLarge as soon as it passes a cap (the rest is never computed)."""
    batches: list[pa.RecordBatch] = []
    rows = nbytes = 0
    try:
        for batch in reader:
            rows += batch.num_rows
            nbytes += batch.nbytes
            if rows > req.max_rows:
                raise QueryTooLarge(
                    f"the result has more than query_max_rows = {req.max_rows} rows: add a LIMIT or aggregate "
                    "(or raise query_max_rows)"
                )
            if nbytes > req.max_bytes:
                raise QueryTooLarge(
                    f"the result is larger than query_max_bytes = {req.max_bytes} bytes (after {rows} rows): "
                    "select fewer columns or rows (or raise query_max_bytes)"
                )
            batches.append(batch)
    finally:
        reader.close()
    return pa.Table.from_batches(batches, schema=reader.schema)


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


__all__ = ["QueryRequest", "query_request", "run_query"]
