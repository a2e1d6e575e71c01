"""Bringing stored rows of older schema versions to the current ones, as Arrow tables, for
the read models: SQL upcasters run vectorised in DuckDB, the others row by row through the
domain's Python chain (es_actors.domain.upcasting)."""

from __future__ import annotations

from typing import Any, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from es_actors.codecs.rows import ARROW_SCHEMA, COL, event_where, rows_to_table, table_to_rows
from es_actors.domain import DomainRegistry
from es_actors.domain.upcasting import UnreadableEvent
from es_actors.read.readmodel.database import fetch_arrow


def relevant_stored_types(registry: DomainRegistry, consumed: Sequence[str]) -> list[str]:
    """Stored types that can read as a consumed type: the types themselves and any type with upcasters."""
    return sorted(set(consumed) | {t for t, _v in registry.decoder.upcasters})


def relevant_rows(table: pa.Table, registry: DomainRegistry, consumed: Sequence[str]) -> pa.Table:
    """The rows of ``table`` that may become events of the consumed types."""
    return table.filter(pc.is_in(table.column("event_type"), pa.array(relevant_stored_types(registry, consumed))))


def upcast_table(cur: duckdb.DuckDBPyConnection, table: pa.Table, registry: DomainRegistry) -> pa.Table:
    """Rows at older versions, brought to current ones; SQL upcasters run vectorised in DuckDB,
    the others row by row through the Python chain. Order by (partition, position) is kept."""
    decoder = registry.decoder
    current = {t: c.schema_version for t, c in registry.events.items()}
    for _step in range(decoder.MAX_STEPS):
        if table.num_rows == 0:
            return table
        is_current = _is_current_mask(table, current)
        if pc.all(is_current).as_py():
            return table
        parts = [table.filter(is_current)]
        old = table.filter(pc.invert(is_current))
        pairs = old.group_by(["event_type", "schema_version"]).aggregate([]).to_pylist()
        for pair in pairs:
            t, v = pair["event_type"], pair["schema_version"]
            group = old.filter(pc.and_(pc.equal(old.column("event_type"), t), pc.equal(old.column("schema_version"), v)))
            up = decoder.upcasters.get((t, v))
            if up is not None and up.sql:
                cur.register("stored", group)
                try:
                    out = fetch_arrow(cur, up.sql)
                except duckdb.Error as exc:
                    r = group.slice(0, 1).to_pylist()[0]
                    raise UnreadableEvent(
                        f"stored event {t} v{v} at partition {r['partition']} position {r['position']}: "
                        f"SQL upcaster failed: {exc}"
                    ) from None
                finally:
                    cur.unregister("stored")
                parts.append(out.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA))
            else:
                parts.append(_python_upcast(group, registry))
        table = pa.concat_tables(parts).sort_by([("partition", "ascending"), ("position", "ascending")])
    raise UnreadableEvent("upcaster chain does not end (a cycle?)")


def _is_current_mask(table: pa.Table, current: dict[str, int]) -> pa.ChunkedArray:
    types = table.column("event_type")
    versions = table.column("schema_version")
    mask = pa.chunked_array([pa.array([False] * table.num_rows)]) if table.num_rows else pa.chunked_array([], pa.bool_())
    for t, v in current.items():
        mask = pc.or_(mask, pc.and_(pc.equal(types, t), pc.equal(versions, v)))
    return mask


def _python_upcast(group: pa.Table, registry: DomainRegistry) -> pa.Table:
    out: list[tuple[Any, ...]] = []
    for r in table_to_rows(group):
        for e in registry.decode(r[COL["event_type"]], r[COL["schema_version"]], r[COL["payload"]], event_where(*r[:5])):
            row = list(r)
            row[COL["event_type"]], row[COL["schema_version"]], row[COL["payload"]] = (
                e.event_type, e.schema_version, e.model_dump_json(),
            )
            out.append(tuple(row))
    return rows_to_table(out)
