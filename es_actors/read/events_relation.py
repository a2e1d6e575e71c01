"""What the ``events`` relation of one query is: the whole log, or one aggregate's rows.

The relation is the log's sealed Parquet segments UNION ALL its durable tail rows. A predicate
on ``position``, ``partition`` or ``recorded_at`` prunes by the segments' row-group statistics
(segments are position ordered). A predicate on the aggregate cannot prune Parquet that is not
clustered by aggregate, so the query layer rewrites the one form where it is sound to: one
SELECT whose only table is ``events`` (no join, CTE, set operation, sample, time travel or
column renaming) and whose WHERE has top-level conjuncts ``aggregate_type = X`` and
``aggregate_id = Y`` with X, Y string literals or parameters bound to strings. For that query
``events`` is only that aggregate's rows, read through the aggregate read path (index + tail,
O(its events)): WHERE filters the table before anything else of the SELECT runs, so
σ_{p∧q}(E) = σ_{p∧q}(σ_p(E)) and the answer is the same. The form is found in DuckDB's own
parse tree (``json_serialize_sql``), never by matching text; anything else gets the full relation.
"""

from __future__ import annotations

from typing import Any, Protocol

import pyarrow as pa

from es_actors.storage.layout import StoreLayout, partition_of

#: The table references whose presence anywhere in the tree rules the rewrite out (a second
#: table could be a view over ``events``, a table function could read it).
_OTHER_SOURCES = frozenset({"TABLE_FUNCTION", "PIVOT", "SHOW_REF", "JOIN"})
_KEYS = ("aggregate_type", "aggregate_id")


class EventsSource(Protocol):
    """Where a query's ``events`` rows come from."""

    def everything(self) -> tuple[Any, pa.Table]:
        """(sealed part, durable tail rows after it) of every partition: the sealed part is a list of
        local Parquet files, a ``pyarrow.dataset.Dataset`` (object storage) or None
        (:func:`~es_actors.storage.backends.events_snapshot`)."""
        ...

    def aggregate(self, aggregate_type: str, aggregate_id: str) -> pa.Table:
        """Every durable row of one aggregate (the log's Arrow schema)."""
        ...


class LogEvents:
    """The ``events`` of a store's log, on either backend. Counts which form each query took (``full_reads``,
    ``aggregate_reads``), so a test can tell the rewrite ran without timing it."""

    def __init__(self, layout: StoreLayout, partitions: int) -> None:
        self.layout, self.partitions = layout, partitions
        self.full_reads = self.aggregate_reads = 0

    def everything(self) -> tuple[Any, pa.Table]:
        from es_actors.storage.backends import events_snapshot

        self.full_reads += 1
        return events_snapshot(self.layout, self.partitions)

    def aggregate(self, aggregate_type: str, aggregate_id: str) -> pa.Table:
        from es_actors.storage.backends import open_backend

        self.aggregate_reads += 1
        p = partition_of(aggregate_type, aggregate_id, self.partitions)
        return open_backend(self.layout.uri).reader(p).read_aggregate(aggregate_type, aggregate_id)


def aggregate_filter(tree: dict[str, Any], params: list[Any] | dict[str, Any] | None) -> tuple[str, str] | None:
    """(aggregate_type, aggregate_id) when the serialized statement has the rewritable form (see
    the module doc), else None. ``tree`` is ``json_serialize_sql``'s output."""
    statements = tree.get("statements") or []
    if len(statements) != 1:
        return None
    node = statements[0].get("node") or {}
    if node.get("type") != "SELECT_NODE" or node.get("sample") is not None:
        return None
    if (node.get("cte_map") or {}).get("map"):
        return None
    table = node.get("from_table") or {}
    if not _is_events(table):
        return None
    if _count_tables(statements) != 1:
        return None
    qualifiers = {str(table.get("alias") or table.get("table_name") or "").lower()}
    found: dict[str, str] = {}
    for conjunct in _conjuncts(node.get("where_clause")):
        pair = _key_equals(conjunct, qualifiers, params)
        if pair is not None:
            found.setdefault(*pair)
    if len(found) != 2:
        return None
    return found["aggregate_type"], found["aggregate_id"]


def _is_events(table: dict[str, Any]) -> bool:
    return (
        table.get("type") == "BASE_TABLE"
        and str(table.get("table_name") or "").lower() == "events"
        and not table.get("schema_name")
        and not table.get("catalog_name")
        and table.get("sample") is None
        and table.get("at_clause") is None
        and not table.get("column_name_alias")
    )


def _count_tables(statements: Any) -> int:
    """Base tables anywhere in the tree; any other source of rows counts as two (rules it out)."""
    count = 0
    stack: list[Any] = [statements]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            kind = item.get("type")
            if kind == "BASE_TABLE":
                count += 1
            elif kind in _OTHER_SOURCES:
                count += 2
            stack.extend(item.values())
    return count


def _conjuncts(expr: Any) -> list[dict[str, Any]]:
    """The top-level AND terms of a WHERE clause (the clause itself if it is not an AND)."""
    if not isinstance(expr, dict):
        return []
    if expr.get("type") == "CONJUNCTION_AND":
        out: list[dict[str, Any]] = []
        for child in expr.get("children") or []:
            out.extend(_conjuncts(child))
        return out
    return [expr]


def _key_equals(expr: dict[str, Any], qualifiers: set[str], params: Any) -> tuple[str, str] | None:
    """("aggregate_type" | "aggregate_id", value) for ``<key column> = <string>`` either way round."""
    if expr.get("type") != "COMPARE_EQUAL":
        return None
    left, right = expr.get("left") or {}, expr.get("right") or {}
    for column, value in ((left, right), (right, left)):
        key = _key_column(column, qualifiers)
        if key is None:
            continue
        text = _string_value(value, params)
        if text is not None:
            return key, text
    return None


def _key_column(expr: dict[str, Any], qualifiers: set[str]) -> str | None:
    if expr.get("type") != "COLUMN_REF":
        return None
    names = [str(n).lower() for n in expr.get("column_names") or []]
    if len(names) == 2 and names[0] in qualifiers:
        names = names[1:]
    if len(names) == 1 and names[0] in _KEYS:
        return names[0]
    return None


def _string_value(expr: dict[str, Any], params: Any) -> str | None:
    """The value of a string literal or of a parameter bound to a str; None for anything else
    (a number would compare after a cast: ``aggregate_id = 1`` also matches '01')."""
    kind = expr.get("type")
    if kind == "VALUE_CONSTANT":
        literal = expr.get("literal")
        if isinstance(literal, dict) and literal.get("kind") == "STRING" and isinstance(literal.get("text"), str):
            text = str(literal["text"])
            return text if _utf8(text) else None
        return None
    if kind == "VALUE_PARAMETER":
        ident = str(expr.get("identifier") or "")
        value: Any = None
        if isinstance(params, dict):
            value = params.get(ident)
        elif isinstance(params, list) and ident.isdigit() and 1 <= int(ident) <= len(params):
            value = params[int(ident) - 1]
        return value if isinstance(value, str) and _utf8(value) else None
    return None


def _utf8(text: str) -> bool:
    """Only text that is UTF-8 (no lone surrogate) is looked up in the log; anything else takes the
    full relation, where DuckDB itself refuses it as a query error."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


__all__ = ["EventsSource", "LogEvents", "aggregate_filter"]
