"""Storage: where events, snapshots and read-model files live, and the integrity of each.

Owns: the storage interface (``api``: the owned, fenced, durable partition log, readers,
followers, snapshots, blob operations, capabilities; ``consistent``: the one consistent-read
retry), the URI -> backend choice (``backends``), the local-disk backend (``local`` over the
write-ahead tail, sealed Parquet segments, durable mark, recovery, compaction, readers,
followers, snapshots, lost ranges, repair and upgrade) and the whole-object backend
(``objects``). May import: ``es_actors.codecs.rows`` (the stored row), config, errors; never
the domain, Ray or DuckDB.
"""
