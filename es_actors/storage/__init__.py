"""Storage: where events, snapshots and read-model files live, and the integrity of each.

Owns: the partition log (write-ahead tail, sealed Parquet segments, durable mark, recovery,
compaction), readers and followers of a partition, snapshots, lost ranges, repair and
upgrade. May import: ``es_actors.codecs.rows`` (the stored row), config, errors; never the
domain, Ray or DuckDB.
"""
