"""What a cutover compares: each relation of the candidate version that a switch shows in
``main`` (tables and views) against the current one (row counts, keyed differences by a table's
primary key, else whole rows with EXCEPT ALL both ways, a few differing rows as a sample), over
the columns both have; a relation only one version has is reported as such. And the candidate's
declared ``cutover_checks`` (one SELECT each, that returns no rows when all is well; any other
statement is refused unrun). Runs inside the caller's transaction, which the caller always rolls
back: both versions are read at one snapshot and nothing a check does stays."""

from __future__ import annotations

from typing import Any, Sequence

import duckdb

from es_actors.read.readmodel.current import first_row

SAMPLE = 5


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def columns(cur: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
    return {c: t for c, t in cur.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position", [schema, table],
    ).fetchall()}


def primary_key(cur: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[str]:
    row = first_row(cur.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE schema_name = ? AND table_name = ? "
        "AND constraint_type = 'PRIMARY KEY'", [schema, table],
    ))
    return list(row[0]) if row else []


def _rows(cur: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    rel = cur.sql(sql)
    names = rel.columns
    return [dict(zip(names, r)) for r in rel.fetchall()]


def _count(cur: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = first_row(cur.execute(f"SELECT count(*) FROM ({sql})"))
    return int(row[0]) if row else 0


def compare_table(cur: duckdb.DuckDBPyConnection, current: str, candidate: str, table: str) -> dict[str, Any]:
    """One table of both versions (present in both)."""
    a, b = f"{_q(current)}.{_q(table)}", f"{_q(candidate)}.{_q(table)}"
    ca, cb = columns(cur, current, table), columns(cur, candidate, table)
    common = [c for c in cb if ca.get(c) == cb[c]]
    shape = []
    if set(cb) - set(ca):
        shape.append(f"new columns {sorted(set(cb) - set(ca))}")
    if set(ca) - set(cb):
        shape.append(f"columns gone {sorted(set(ca) - set(cb))}")
    retyped = sorted(c for c in cb if c in ca and ca[c] != cb[c])
    if retyped:
        shape.append("columns of another type " + ", ".join(f"{c} ({ca[c]} -> {cb[c]})" for c in retyped))
    out: dict[str, Any] = {
        "table": table, "rows_current": _count(cur, f"SELECT * FROM {a}"), "rows_candidate": _count(cur, f"SELECT * FROM {b}"),
        "shape": "; ".join(shape) or None, "compared_columns": common, "key": None,
        "only_in_current": 0, "only_in_candidate": 0, "changed": 0, "sample": [],
    }
    if not common:
        out["differs"] = True
        return out
    cols = ", ".join(_q(c) for c in common)
    key = primary_key(cur, candidate, table)
    if key and all(k in common for k in key) and primary_key(cur, current, table) == key:
        out["key"] = key
        keys = ", ".join(_q(k) for k in key)
        gone = f"SELECT {keys} FROM {a} EXCEPT SELECT {keys} FROM {b}"
        new = f"SELECT {keys} FROM {b} EXCEPT SELECT {keys} FROM {a}"
        rest = [c for c in common if c not in key]
        on = " AND ".join(f"x.{_q(k)} = y.{_q(k)}" for k in key)
        distinct = " OR ".join(f"x.{_q(c)} IS DISTINCT FROM y.{_q(c)}" for c in rest) or "false"
        changed = f"SELECT x.* FROM {a} x JOIN {b} y ON {on} WHERE {distinct}"
        out["only_in_current"], out["only_in_candidate"], out["changed"] = _count(cur, gone), _count(cur, new), _count(cur, changed)
        sample: list[dict[str, Any]] = [
            {"in": "current only", "row": r} for r in _rows(cur, f"SELECT * FROM {a} WHERE ({keys}) IN ({gone}) LIMIT {SAMPLE}")]
        sample += [{"in": "candidate only", "row": r} for r in _rows(cur, f"SELECT * FROM {b} WHERE ({keys}) IN ({new}) LIMIT {SAMPLE}")]
        for r in _rows(cur, f"SELECT {', '.join('x.' + _q(k) for k in key)} FROM {a} x JOIN {b} y ON {on} WHERE {distinct} LIMIT {SAMPLE}"):
            where = " AND ".join(f"{_q(k)} IS NOT DISTINCT FROM ?" for k in key)
            params = [r[k] for k in key]
            sample.append({
                "in": "both, changed",
                "current": _rows_params(cur, f"SELECT {cols} FROM {a} WHERE {where}", params),
                "candidate": _rows_params(cur, f"SELECT {cols} FROM {b} WHERE {where}", params),
            })
    else:
        gone = f"SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b}"
        new = f"SELECT {cols} FROM {b} EXCEPT ALL SELECT {cols} FROM {a}"
        out["only_in_current"], out["only_in_candidate"] = _count(cur, gone), _count(cur, new)
        sample = [{"in": "current only", "row": r} for r in _rows(cur, f"{gone} LIMIT {SAMPLE}")]
        sample += [{"in": "candidate only", "row": r} for r in _rows(cur, f"{new} LIMIT {SAMPLE}")]
    out["sample"] = sample[:3 * SAMPLE]
    out["differs"] = bool(out["shape"] or out["only_in_current"] or out["only_in_candidate"] or out["changed"])
    return out


def _rows_params(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> dict[str, Any] | None:
    rel = cur.execute(sql, params)
    names = [d[0] for d in rel.description or []]
    row = first_row(rel)
    return dict(zip(names, row)) if row else None


def relations(cur: duckdb.DuckDBPyConnection, schema: str) -> dict[str, str]:
    """Every relation of a schema that a switch shows in ``main``: name -> "table" or "view"."""
    return {n: ("view" if t == "VIEW" else "table") for n, t in cur.execute(
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [schema],
    ).fetchall()}


def compare(cur: duckdb.DuckDBPyConnection, current: str, candidate: str) -> list[dict[str, Any]]:
    """Every relation (table or view) of either version; one only a version has is reported
    (``only_in``), a difference whatever the declared checks say."""
    ta, tb = relations(cur, current), relations(cur, candidate)
    out = []
    for t in sorted(set(ta) | set(tb)):
        kind = tb.get(t) or ta[t]
        if t in ta and t in tb:
            out.append({**compare_table(cur, current, candidate, t), "kind": kind})
            if ta[t] != tb[t]:
                out[-1]["shape"] = "; ".join(filter(None, [f"a {ta[t]} in the current version, a {tb[t]} in the candidate",
                                                           out[-1]["shape"]]))
                out[-1]["differs"] = True
        else:
            side, schema = ("candidate", candidate) if t in tb else ("current", current)
            out.append({"table": t, "kind": kind, "shape": f"{kind} only in the {side} version", "differs": True,
                        "only_in": side, f"rows_{side}": _count(cur, f"SELECT * FROM {_q(schema)}.{_q(t)}")})
    return out


def run_checks(cur: duckdb.DuckDBPyConnection, current: str, candidate: str, checks: Sequence[str]) -> list[dict[str, Any]]:
    """The candidate's ``cutover_checks``: each runs with the candidate's schema first on the search
    path (``{current}`` names the current version's schema); rows returned mean it fails."""
    out = []
    cur.execute(f"SET search_path = '{candidate},main'")
    try:
        for sql in checks:
            text = sql.replace("{current}", _q(current))
            try:
                refused = _not_a_query(cur, text)
                if refused:
                    out.append({"sql": sql, "ok": False, "error": refused})
                    continue
                rows = _rows(cur, text)
                out.append({"sql": sql, "ok": not rows, "rows": len(rows), "sample": rows[:SAMPLE]})
            except duckdb.Error as exc:
                out.append({"sql": sql, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
                _fresh_transaction(cur)  # DuckDB aborts the transaction on an error: the next check needs one
    finally:
        cur.execute("SET search_path = 'main'")
    return out


def _not_a_query(cur: duckdb.DuckDBPyConnection, sql: str) -> str | None:
    """Why a declared check may not run (it is not one SELECT: it could write), or None."""
    statements = cur.extract_statements(sql)
    if len(statements) != 1:
        return f"refused: a cutover check is one SELECT statement, this has {len(statements)}"
    if statements[0].type != duckdb.StatementType.SELECT:
        return f"refused: a cutover check may only read (one SELECT), this is a {statements[0].type.name} statement"
    return None


def _fresh_transaction(cur: duckdb.DuckDBPyConnection) -> None:
    """After a failed statement inside the caller's transaction: roll it back and begin another
    (still rolled back by the caller); outside one, nothing to do."""
    try:
        cur.execute("ROLLBACK")
    except duckdb.Error:
        return  # no transaction was active
    cur.execute("BEGIN")
