"""How things are written down: the stored event row (columns and Arrow schema, a public
contract users query), client views of stored rows (:class:`RecordedEvent`,
:class:`CommandResult`), and the snapshot state codec with the fingerprint that says when a
snapshot may be used.

Owns: encodings. May import: ``es_actors.domain``, ``es_actors.errors``, pyarrow, pydantic;
never storage, Ray or DuckDB.
"""
