"""The local-disk backend (ADR-005, ADR-009, ADR-014): a write-ahead tail of checksummed frames
appended with ``write`` + ``fdatasync`` (``wal``, ``durable_mark``), sealed Parquet segments
published by rename under a ``current`` generation link (``segments``), the owner's recovery,
group commit, sealing and compaction (``partition_log``), consistent readers (``reader``) and
followers (``follower``), snapshots (``snapshots``), and the operator's repair and upgrade.
``backend`` adapts them to the storage protocols of :mod:`es_actors.storage.api`.
"""
