"""A persistent index of each partition's sealed log, clustered by aggregate (ADR-015).

``<store>/index/pNNNN/run-*.arrow``: immutable runs (Arrow IPC, memory-mapped) holding every row of
a position range sorted by (stream_hash, version), so one aggregate's events are a binary search
and a slice away. Derived data beside the log: readers use only runs they can check
(:mod:`.reading`, :mod:`.validity`), the partition's owner writes, reconciles and merges them (:mod:`.writing`),
the file format is in :mod:`.runs`.
"""

from es_actors.storage.local.stream_index.reading import IndexView, StreamIndex, index_dir
from es_actors.storage.local.stream_index.runs import stream_hash
from es_actors.storage.local.stream_index.writing import StreamIndexWriter, build_index

__all__ = ["IndexView", "StreamIndex", "StreamIndexWriter", "build_index", "index_dir", "stream_hash"]
