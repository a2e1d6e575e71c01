"""One index run: an immutable Arrow IPC file of a partition's rows first..last, sorted by
(stream_hash, version), with what binds it to the log in its schema metadata.

``index/p0003/run-<first:020d>-<last:020d>-<crc32>.arrow``: the name carries the file's CRC-32
(checked by the writer when it reconciles); the metadata (``es_actors.index.*``) the format
version, the store's id, the partition, the position range, the row count, the source segments
as ``[name, size]`` pairs, the merge tier and a CRC-32 of the key columns (stream_hash, version,
position), which readers check once per process per file before trusting the sort order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.storage import files
from es_actors.storage.files import fsync_dir, fsync_file
from es_actors.storage.local.segments import file_crc32

FORMAT = "1"
META = "es_actors.index."
HASH_FIELD = pa.field("stream_hash", pa.uint64(), nullable=False)
RUN_SCHEMA = pa.schema([HASH_FIELD, *ARROW_SCHEMA])
KEY_COLUMNS = ("stream_hash", "version", "position")
_RUN = re.compile(r"^run-(\d{20})-(\d{20})-([0-9a-f]{8})\.arrow$")


def stream_hash(aggregate_type: str, aggregate_id: str) -> int:
    """The first 8 bytes, big-endian, of blake2b(type NUL id): the run's sort key. Module-level so a
    test can replace it (e.g. force collisions); writer and reader both look it up at call time."""
    digest = hashlib.blake2b(f"{aggregate_type}\x00{aggregate_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def run_name(first: int, last: int, crc: int) -> str:
    return f"run-{first:020d}-{last:020d}-{crc:08x}.arrow"


def parse_run_name(name: str) -> tuple[int, int, int] | None:
    """(first, last, crc) of a run file name, or None for anything else in the directory."""
    m = _RUN.match(name)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3), 16)) if m else None


def identity(path: Path) -> tuple[int, int, int, int]:
    """(dev, inode, size, mtime): a file's bytes are checked once per identity per process."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def key_crc(batch: pa.RecordBatch | pa.Table) -> int:
    crc = 0
    for name in KEY_COLUMNS:
        col = batch.column(name)
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        crc = zlib.crc32(np.ascontiguousarray(arr.to_numpy(zero_copy_only=False)).view(np.uint8).data, crc)
    return crc


def hash_column(table: pa.Table) -> pa.Array:
    """stream_hash of every row: one blake2b per distinct aggregate (dictionary-encoded in C++)."""
    types = table.column("aggregate_type").combine_chunks().dictionary_encode()
    ids = table.column("aggregate_id").combine_chunks().dictionary_encode()
    id_names = ids.dictionary.to_pylist()
    type_names = types.dictionary.to_pylist()
    n = max(1, len(id_names))
    key = types.indices.to_numpy().astype(np.int64) * n + ids.indices.to_numpy().astype(np.int64)
    unique, inverse = np.unique(key, return_inverse=True)
    fn = stream_hash
    hashes = np.fromiter((fn(type_names[k // n], id_names[k % n]) for k in unique.tolist()),
                         dtype=np.uint64, count=len(unique))
    return pa.array(hashes[inverse.reshape(-1)], pa.uint64())


@dataclass(frozen=True)
class RunMeta:
    """What a run says about itself (its schema metadata)."""

    store_id: str
    partition: int
    first: int
    last: int
    rows: int
    sources: tuple[tuple[str, int, int], ...]  # (segment name, size, mtime_ns) as indexed
    tier: int
    key_crc: int

    def encode(self) -> dict[bytes, bytes]:
        values = {
            "format": FORMAT, "store_id": self.store_id, "partition": str(self.partition),
            "first": str(self.first), "last": str(self.last), "rows": str(self.rows),
            "sources": json.dumps([list(s) for s in self.sources]), "tier": str(self.tier),
            "key_crc32": f"{self.key_crc:08x}",
        }
        return {(META + k).encode(): v.encode() for k, v in values.items()}

    @classmethod
    def decode(cls, metadata: dict[bytes, bytes] | None) -> "RunMeta":
        """ValueError if the metadata is missing, of another format version, or malformed."""
        m = {k.decode()[len(META):]: v.decode() for k, v in (metadata or {}).items() if k.startswith(META.encode())}
        if m.get("format") != FORMAT:
            raise ValueError(f"index format {m.get('format')!r}, this es_actors reads {FORMAT!r}")
        return cls(
            store_id=m["store_id"], partition=int(m["partition"]), first=int(m["first"]), last=int(m["last"]),
            rows=int(m["rows"]), sources=tuple((str(n), int(s), int(t)) for n, s, t in json.loads(m["sources"])),
            tier=int(m["tier"]), key_crc=int(m["key_crc32"], 16),
        )


@dataclass
class OpenRun:
    """A run opened (memory-mapped) and checked: its rows, zero-copy hash and version columns."""

    path: Path
    meta: RunMeta
    batch: pa.RecordBatch
    hashes: np.ndarray
    versions: np.ndarray
    ident: tuple[int, int, int, int]
    size: int
    file_crc_ok: bool = field(default=False)
    rows: pa.RecordBatch = field(init=False)  # the ARROW_SCHEMA columns only (zero-copy)
    positions: np.ndarray = field(init=False)
    _fixed_row_bytes: int = field(init=False)
    _string_offsets: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        b = self.batch
        self.rows = pa.RecordBatch.from_arrays(b.columns[1:], schema=ARROW_SCHEMA)
        self.positions = b.column("position").to_numpy(zero_copy_only=True)
        self._string_offsets, self._fixed_row_bytes = [], 0
        for f, col in zip(b.schema, b.columns):
            if pa.types.is_string(f.type):
                self._string_offsets.append(np.frombuffer(col.buffers()[1], dtype=np.int32, count=len(col) + 1,
                                                          offset=col.offset * 4))
                self._fixed_row_bytes += 4
            else:
                self._fixed_row_bytes += f.type.bit_width // 8
            self._fixed_row_bytes += 0 if col.buffers()[0] is None else 1  # validity bits, rounded up

    def slice_bytes(self, a: int, b: int) -> int:
        """Bytes of the run's rows a..b-1 (what reading them touches in the map)."""
        return (b - a) * self._fixed_row_bytes + sum(int(o[b] - o[a]) for o in self._string_offsets)


class RunInvalid(Exception):
    """A run that must not be used (truncated, damaged, foreign, malformed); the message says why."""


def open_run(path: Path) -> OpenRun:
    """Map a run, check its framing, metadata, name and key-column CRC. RunInvalid says why not;
    FileNotFoundError if it vanished (a merge deleted it: the caller reads again)."""
    parsed = parse_run_name(path.name)
    if parsed is None:
        raise RunInvalid(f"{path.name}: not a run name")
    ident = identity(path)
    try:
        source = files.map_input(path)
        reader = pa.ipc.open_file(source)
        meta = RunMeta.decode(reader.schema.metadata)
        if reader.num_record_batches != 1:
            raise RunInvalid(f"{path.name}: {reader.num_record_batches} record batches, a run has one")
        batch = reader.get_batch(0)
    except FileNotFoundError:
        raise
    except RunInvalid:
        raise
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        raise RunInvalid(f"{path.name}: cannot be read as a run ({type(exc).__name__}: {exc})") from None
    if not batch.schema.remove_metadata().equals(RUN_SCHEMA):
        raise RunInvalid(f"{path.name}: columns differ from the run schema")
    if (meta.first, meta.last) != parsed[:2] or meta.rows != batch.num_rows or meta.rows != meta.last - meta.first + 1:
        raise RunInvalid(f"{path.name}: metadata says {meta.first}..{meta.last}, {meta.rows} rows; holds {batch.num_rows}")
    if key_crc(batch) != meta.key_crc:
        raise RunInvalid(f"{path.name}: key columns fail their CRC-32 (damaged)")
    hashes = batch.column("stream_hash").to_numpy(zero_copy_only=True)
    versions = batch.column("version").to_numpy(zero_copy_only=True)
    return OpenRun(path, meta, batch, hashes, versions, ident, ident[2])


def check_file_crc(run: OpenRun) -> None:
    """The whole file against the CRC-32 in its name (the writer's check, once per identity)."""
    if run.file_crc_ok:
        return
    parsed = parse_run_name(run.path.name)
    assert parsed is not None
    actual = file_crc32(run.path)
    if actual != parsed[2]:
        raise RunInvalid(f"{run.path.name}: file CRC-32 {actual:08x}, its name says {parsed[2]:08x} (damaged)")
    run.file_crc_ok = True


def sorted_run_table(table: pa.Table) -> pa.Table:
    """ARROW_SCHEMA rows (+ stream_hash if present) as one chunk sorted by (stream_hash, version)."""
    if "stream_hash" not in table.column_names:
        table = table.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA)
        table = pa.Table.from_arrays([hash_column(table), *table.columns], schema=RUN_SCHEMA)
    else:
        table = table.select(RUN_SCHEMA.names).cast(RUN_SCHEMA)
    order = pc.sort_indices(table, sort_keys=[("stream_hash", "ascending"), ("version", "ascending")])
    return table.take(order).combine_chunks()


def write_run(directory: Path, table: pa.Table, meta_fields: dict[str, Any]) -> Path:
    """Write a sorted run durably (temp name, fsync, CRC into the name, rename, fsync the
    directory): readers see it whole or not at all."""
    positions = table.column("position")
    first, last = int(pc.min(positions).as_py()), int(pc.max(positions).as_py())
    meta = RunMeta(first=first, last=last, rows=table.num_rows, key_crc=key_crc(table), **meta_fields)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".run-{first:020d}-{last:020d}.{os.getpid()}.tmp"
    schema = RUN_SCHEMA.with_metadata(meta.encode())
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(
            [table.column(n).combine_chunks() for n in RUN_SCHEMA.names], schema=schema))
    fsync_file(tmp)
    path = directory / run_name(first, last, file_crc32(tmp))
    os.replace(tmp, path)
    fsync_dir(directory)
    return path
