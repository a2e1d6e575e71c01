"""Refuse, before anything runs, a query that could write, escape, or run other SQL (ADR-010).

DuckDB cannot open the read-model file read-only while the projector holds it for writing,
so "read-only" is decided here, on DuckDB's own parse tree (``json_serialize_sql``): the
query must be one SELECT-like statement whose every node, at any depth (subqueries, CTEs,
set operations, lateral joins, table functions, lambdas, window specs), is of a known
read-only kind, and whose every function call is on the allow-list of
:mod:`es_actors.query_functions` for the place it is called (in an expression or in FROM).
Anything unknown is refused (fail-closed): a node kind a later DuckDB adds, a function nobody
classified, a macro defined in the database rather than built in, a schema-qualified call
into another catalog, a file path in FROM.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from es_actors.errors import QueryFailed, QueryRefused
from es_actors.read.query_functions import ALLOWED, EXPRESSION_TYPES, TABLE_TYPES

#: Query nodes that only read. INSERT/UPDATE/DELETE/MERGE nodes (data-modifying CTEs) are not here.
_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_TABLE_REFS = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EMPTY", "EXPRESSION_LIST", "PIVOT", "SHOW_REF"}
)
_MODIFIERS = frozenset(
    {"LIMIT_MODIFIER", "LIMIT_PERCENT_MODIFIER", "ORDER_MODIFIER", "DISTINCT_MODIFIER",
     "ORDER_DEFAULT", "ASCENDING", "DESCENDING"}
)
#: Unbound expression kinds the parser produces. Function calls among them are checked by name.
_EXPRESSIONS = frozenset({
    "OPERATOR_CAST", "OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "OPERATOR_UNPACK",
    "OPERATOR_NULLIF", "OPERATOR_COALESCE", "OPERATOR_TRY",
    "COMPARE_EQUAL", "COMPARE_NOTEQUAL", "COMPARE_LESSTHAN", "COMPARE_GREATERTHAN", "COMPARE_LESSTHANOREQUALTO",
    "COMPARE_GREATERTHANOREQUALTO", "COMPARE_IN", "COMPARE_NOT_IN", "COMPARE_DISTINCT_FROM", "COMPARE_BETWEEN",
    "COMPARE_NOT_BETWEEN", "COMPARE_NOT_DISTINCT_FROM",
    "CONJUNCTION_AND", "CONJUNCTION_OR",
    "VALUE_CONSTANT", "VALUE_PARAMETER", "VALUE_NULL",
    "GROUPING_FUNCTION", "WINDOW_AGGREGATE", "WINDOW_RANK", "WINDOW_RANK_DENSE", "WINDOW_NTILE",
    "WINDOW_PERCENT_RANK", "WINDOW_CUME_DIST", "WINDOW_ROW_NUMBER", "WINDOW_FIRST_VALUE", "WINDOW_LAST_VALUE",
    "WINDOW_LEAD", "WINDOW_LAG", "WINDOW_NTH_VALUE", "WINDOW_FILL",
    "FUNCTION", "CASE_EXPR", "ARRAY_EXTRACT", "ARRAY_SLICE", "STRUCT_EXTRACT", "ARRAY_CONSTRUCTOR", "ARROW",
    "SUBQUERY", "STAR", "COLUMN_REF", "LAMBDA", "LAMBDA_REF", "COLLATE", "POSITIONAL_REFERENCE", "TYPE",
})
KNOWN_NODE_TYPES = _QUERY_NODES | _TABLE_REFS | _MODIFIERS | _EXPRESSIONS

_WRITES = {"INSERT_QUERY_NODE": "INSERT", "UPDATE_QUERY_NODE": "UPDATE", "DELETE_QUERY_NODE": "DELETE",
           "MERGE_INTO_QUERY_NODE": "MERGE"}

EXPRESSION_FUNCTIONS = frozenset(n for n, t in ALLOWED if t in EXPRESSION_TYPES or t == "binder")
TABLE_FUNCTIONS = frozenset(n for n, t in ALLOWED if t in TABLE_TYPES)

_BUILTIN_CATALOGS = frozenset({"", "system"})
_BUILTIN_SCHEMAS = frozenset({"", "main", "pg_catalog"})


def check_query(con: duckdb.DuckDBPyConnection, sql: str, defined: frozenset[str] | None = None) -> dict[str, Any]:
    """Raise QueryRefused unless ``sql`` is one statement that can only read (see the module doc);
    QueryFailed for SQL that does not parse. Runs nothing of the query. Returns the checked
    parse tree (``json_serialize_sql``), so the caller can plan from what was checked.

    ``defined``: the functions created in the database (:func:`database_functions`), when the
    caller keeps them (listing them costs about 10 ms); looked up here otherwise."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryFailed(str(exc)) from None
    if len(statements) != 1:
        raise QueryRefused(f"give exactly one statement, not {len(statements)}")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise QueryRefused(
            f"queries are read-only: {kind} statements are refused (only SELECT-like statements run; "
            "read models change only through projections)"
        )
    ((text,),) = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()  # parses; runs nothing
    try:
        tree = json.loads(text)
    except RecursionError:
        raise QueryRefused("the query nests too deeply to be checked") from None
    if tree.get("error"):
        raise QueryRefused(f"the query cannot be checked, so it is refused: {tree.get('error_message')}")
    calls = walk(tree["statements"])
    if defined is None:
        defined = database_functions(con)
    for name, _where in calls:
        if name in defined:
            raise QueryRefused(
                f"function {name!r} is defined in the database (a macro), not built into DuckDB: refused"
            )
    return tree  # type: ignore[no-any-return]


def walk(statements: Any) -> list[tuple[str, str]]:
    """Check every node of a serialized parse tree; returns the function calls as (name, where).
    Iterative: a deep tree cannot exhaust the Python stack."""
    calls: list[tuple[str, str]] = []
    stack: list[tuple[Any, bool]] = [(statements, False)]
    while stack:
        node, in_from = stack.pop()
        if isinstance(node, list):
            stack.extend((v, False) for v in node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if isinstance(kind, str):
            if kind in _WRITES:
                raise QueryRefused(
                    f"queries are read-only: a data-modifying CTE ({_WRITES[kind]} ... RETURNING) is refused"
                )
            if kind not in KNOWN_NODE_TYPES:
                raise QueryRefused(f"queries are read-only: a {kind} node is not known to only read, so it is refused")
            if kind == "BASE_TABLE":
                _check_table_name(node)
            elif kind == "TABLE_FUNCTION":
                stack.append((node.get("function"), True))
                stack.extend((v, False) for k, v in node.items() if k != "function")
                continue
        if node.get("class") in ("FUNCTION", "WINDOW") and "function_name" in node:
            calls.append(_check_call(node, in_from))
        stack.extend((v, False) for v in node.values())
    return calls


def _check_call(node: dict[str, Any], in_from: bool) -> tuple[str, str]:
    name = str(node["function_name"]).lower()
    catalog, schema = str(node.get("catalog") or "").lower(), str(node.get("schema") or "").lower()
    shown = ".".join(p for p in (catalog, schema, name) if p)
    if catalog not in _BUILTIN_CATALOGS or schema not in _BUILTIN_SCHEMAS:
        raise QueryRefused(f"function {shown!r}: only DuckDB's built-in functions may be called in queries")
    allowed = TABLE_FUNCTIONS if in_from else EXPRESSION_FUNCTIONS
    if name not in allowed:
        where = "table function" if in_from else "function"
        raise QueryRefused(
            f"{where} {shown!r} is not allowed in queries (it runs SQL, touches files, settings or state, "
            "or is not classified; see es_actors.query_functions)"
        )
    return name, "from" if in_from else "expression"


_FILE_SUFFIXES = frozenset({
    "csv", "tsv", "txt", "json", "jsonl", "ndjson", "parquet", "duckdb", "db", "ddb", "sqlite", "arrow",
    "ipc", "feather", "avro", "xlsx", "gz", "zst", "zstd", "wal", "tmp",
})


def _check_table_name(node: dict[str, Any]) -> None:
    """A file path in FROM is a replacement scan that reads files: refused. It hides in any part
    of the name: ``'x.csv'``, ``"dir/x".csv`` (schema ``dir/x``, table ``csv``),
    ``"x".parquet``. No table, schema or database of a read model needs these characters, and a
    schema-qualified name ending in a file suffix is read as the path it spells."""
    parts = [str(node.get(k) or "") for k in ("catalog_name", "schema_name", "table_name")]
    path = (node.get("qualified_name") or {}).get("path") or []
    parts += [str(p) for p in path if p is not None]
    shown = ".".join(p for p in parts[:3] if p)
    if any(c in part for part in parts for c in "./\\:*?~"):
        raise QueryRefused(f"reading files by path ({shown!r}) is refused in queries: the log is the `events` relation")
    if (parts[0] or parts[1]) and parts[2].lower() in _FILE_SUFFIXES:
        raise QueryRefused(f"{shown!r} reads as a file path ({parts[2]!r} suffix) and is refused in queries")


def database_functions(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """Functions (macros) created in the database rather than built in: a call by such a name
    would run the database's definition (it shadows a built-in of the same name)."""
    rows = con.execute("SELECT DISTINCT lower(function_name) FROM duckdb_functions() WHERE NOT internal").fetchall()
    return frozenset(r[0] for r in rows)


__all__ = ["check_query", "database_functions", "walk", "KNOWN_NODE_TYPES", "EXPRESSION_FUNCTIONS", "TABLE_FUNCTIONS"]
