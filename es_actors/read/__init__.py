"""The read path: projection definitions, the projection runner (following each partition's
log and applying events to DuckDB read models), the projector actor shell, read-model
checkpoints and handlers per projection kind, subscriptions, and read-only SQL queries.

Owns: everything derived from the log after the fact. May import: domain, codecs, storage,
runtime, config, errors; never ``es_actors.write`` or the facade.
"""
