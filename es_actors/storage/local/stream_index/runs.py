"""One index run: an immutable Arrow IPC file of a partition's rows first..last, sorted by
(stream_hash, version), with what binds it to the log in its schema metadata.

``index/p0003/run-<first:020d>-<last:020d>-<crc32>.arrow``: the name carries the file's CRC-32
(checked by the writer when it reconciles); the metadata (``es_actors.index.*``) the format
version, the store's id, the partition, the position range, the row count, the source segments
as ``[name, size]`` pairs, the merge tier, a CRC-32 of the key columns (stream_hash, version,
position), which readers check once per process per file before trusting the sort order, and a
CRC-32 per block of BLOCK_ROWS consecutive rows over every column's bytes, which readers check
for each block a lookup returns rows from (once per process per block) before trusting its
payloads: a whole-file check at open would make a process's first read O(store).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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
BLOCK_ROWS = 256  # rows per block CRC (a multiple of 8: validity bitmaps split on bytes); benchmarks/stream_index.py
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


class BlockCrc:
    """CRC-32 of rows a..b-1 of a batch over every column's bytes: validity bits (all-valid when a
    column has no bitmap, so a null turned into a value is caught), fixed-width values, and for
    strings the offsets a..b and the data bytes between them. numpy views on the Arrow buffers (no
    copy), zlib.crc32 at C speed. Arrays must have offset 0 (runs as written and as mapped do);
    numpy slices never read past a buffer, so damaged offsets only yield a wrong CRC."""

    def __init__(self, columns: Sequence[pa.Array], block_rows: int = BLOCK_ROWS) -> None:
        self._all_valid = np.full(block_rows // 8 + 1, 0xFF, dtype=np.uint8)  # a column with no validity bitmap
        # per column: (validity bytes or None, values bytes, value width; 0 = string: offsets int32, data bytes)
        self._columns: list[tuple[np.ndarray | None, np.ndarray, int, np.ndarray | None, np.ndarray | None]] = []
        for col in columns:
            if col.offset != 0:
                raise ValueError("BlockCrc needs arrays with offset 0")
            bufs = col.buffers()
            n = len(col)
            valid = None if bufs[0] is None else np.frombuffer(bufs[0], dtype=np.uint8, count=(n + 7) // 8)
            if pa.types.is_string(col.type):
                offsets = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1)
                data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
                self._columns.append((valid, offsets.view(np.uint8), 0, offsets, data))
            else:
                width = col.type.bit_width // 8
                self._columns.append((valid, np.frombuffer(bufs[1], dtype=np.uint8, count=n * width), width, None, None))

    def crc(self, a: int, b: int) -> int:
        """``a`` a multiple of 8, ``b - a`` at most the block size."""
        crc = 0
        crc32: Callable[[Any, int], int] = zlib.crc32  # numpy views are buffers (the stubs do not say so)
        full, tail = (b - a) // 8, (b - a) % 8
        for valid, values, width, offsets, data in self._columns:
            bits = self._all_valid if valid is None else valid[a // 8:]
            crc = crc32(bits[:full], crc)
            if tail:
                crc = crc32(bytes((int(bits[full]) & ((1 << tail) - 1),)), crc)
            if width:
                crc = crc32(values[a * width:b * width], crc)
            else:
                assert offsets is not None and data is not None
                crc = crc32(values[a * 4:(b + 1) * 4], crc)
                crc = crc32(data[max(0, int(offsets[a])):max(0, int(offsets[b]))], crc)
        return crc


def block_crcs(columns: Sequence[pa.Array], block_rows: int = BLOCK_ROWS) -> bytes:
    """The CRC-32 of every block of ``block_rows`` rows, as little-endian uint32s (a run's metadata)."""
    n = len(columns[0]) if columns else 0
    hasher = BlockCrc(columns, block_rows)
    crcs = np.fromiter((hasher.crc(a, min(a + block_rows, n)) for a in range(0, n, block_rows)),
                       dtype="<u4", count=-(-n // block_rows))
    return crcs.tobytes()


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
    block_rows: int = BLOCK_ROWS
    block_crcs: bytes = b""  # little-endian uint32 per block of block_rows rows

    def encode(self) -> dict[bytes, bytes]:
        values = {
            "format": FORMAT, "store_id": self.store_id, "partition": str(self.partition),
            "first": str(self.first), "last": str(self.last), "rows": str(self.rows),
            "sources": json.dumps([list(s) for s in self.sources]), "tier": str(self.tier),
            "key_crc32": f"{self.key_crc:08x}", "block_rows": str(self.block_rows),
            "block_crc32": base64.b64encode(self.block_crcs).decode(),
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
            tier=int(m["tier"]), key_crc=int(m["key_crc32"], 16), block_rows=int(m["block_rows"]),
            block_crcs=base64.b64decode(m["block_crc32"], validate=True),
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
    _block_crc: BlockCrc = field(init=False)
    _expected: np.ndarray = field(init=False)  # each block's CRC-32 as written
    _verified: np.ndarray = field(init=False)  # blocks whose CRC passed in this process (one byte a block)
    _py_columns: list[tuple[pa.Array, np.ndarray | None]] = field(init=False)  # how row_tuples reads each column

    def __post_init__(self) -> None:
        b = self.batch
        self._block_crc = BlockCrc(b.columns, self.meta.block_rows)
        self._expected = np.frombuffer(self.meta.block_crcs, dtype="<u4")
        self._verified = np.zeros(len(self._expected), dtype=bool)
        self.rows = pa.RecordBatch.from_arrays(b.columns[1:], schema=ARROW_SCHEMA)
        self.positions = b.column("position").to_numpy(zero_copy_only=True)
        self._py_columns = []
        for f, col in zip(ARROW_SCHEMA, self.rows.columns):
            if f.name == "recorded_at":
                col = col.view(pa.int64())  # epoch microseconds, as rows carry it (table_to_rows)
            fixed = not pa.types.is_string(col.type) and col.buffers()[0] is None  # no nulls possible: numpy
            self._py_columns.append((col, col.to_numpy(zero_copy_only=True) if fixed else None))
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

    def column_lists(self, a: int, b: int) -> list[list[Any]]:
        """Rows a..b-1 as one list per column in ``COLUMNS`` order, recorded_at in epoch
        microseconds (zipped, what ``table_to_rows`` of the slice gives), converted from arrays
        prepared at open (numpy for columns that cannot hold nulls). Call :meth:`verify_rows`
        first: it checks the bytes."""
        n = b - a
        return [arr.slice(a, n).to_pylist() if values is None else values[a:b].tolist()
                for arr, values in self._py_columns]

    def verify_rows(self, a: int, b: int) -> int:
        """Check every block holding rows a..b-1 not yet checked in this process (the bitmap lives
        as long as this map: bounded by the run's size / BLOCK_ROWS): its CRC-32, then
        ``validate(full=True)`` of its rows (offsets in bounds, UTF-8 valid), so a lookup's rows,
        inside checked blocks, are never read past the map. RunInvalid (or pyarrow's error) names
        the first damaged block; returns the bytes read to check (0 when all were cached)."""
        size = self.meta.block_rows
        touched = 0
        for k in range(a // size, (b - 1) // size + 1):
            if self._verified[k]:
                continue
            lo, hi = k * size, min((k + 1) * size, self.meta.rows)
            if self._block_crc.crc(lo, hi) != int(self._expected[k]):
                raise RunInvalid(f"{self.path.name}: rows {lo}..{hi - 1} fail their block CRC-32 (damaged)")
            self.rows.slice(lo, hi - lo).validate(full=True)
            self._verified[k] = True
            touched += self.slice_bytes(lo, hi)
        return touched


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
    blocks = -(-meta.rows // meta.block_rows) if meta.block_rows > 0 else -1
    if meta.block_rows <= 0 or meta.block_rows % 8 or len(meta.block_crcs) != 4 * blocks:
        raise RunInvalid(f"{path.name}: block CRCs malformed ({len(meta.block_crcs)} bytes for {meta.rows} rows "
                         f"in blocks of {meta.block_rows})")
    try:
        batch.validate()  # buffer sizes fit the row count (cheap; the slices are validated in full at lookup)
        if key_crc(batch) != meta.key_crc:
            raise RunInvalid(f"{path.name}: key columns fail their CRC-32 (damaged)")
        hashes = batch.column("stream_hash").to_numpy(zero_copy_only=True)
        versions = batch.column("version").to_numpy(zero_copy_only=True)
        return OpenRun(path, meta, batch, hashes, versions, ident, ident[2])
    except (pa.ArrowException, ValueError) as exc:
        raise RunInvalid(f"{path.name}: cannot be read as a run ({type(exc).__name__}: {exc})") from None


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


def _first_offset(col: pa.Array) -> int:
    """A string column's first value offset (0 as written to a file; a slice's may not be)."""
    if not pa.types.is_string(col.type) or len(col) == 0:
        return 0
    return int(np.frombuffer(col.buffers()[1], dtype=np.int32, count=1)[0])


def write_run(directory: Path, table: pa.Table, meta_fields: dict[str, Any]) -> Path:
    """Write a sorted run durably (temp name, fsync, CRC into the name, rename, fsync the
    directory): readers see it whole or not at all."""
    positions = table.column("position")
    first, last = int(pc.min(positions).as_py()), int(pc.max(positions).as_py())
    columns = [table.column(n).combine_chunks() for n in RUN_SCHEMA.names]
    columns = [pa.concat_arrays([c]) if c.offset or _first_offset(c) else c for c in columns]  # as a reader maps it
    meta = RunMeta(first=first, last=last, rows=table.num_rows, key_crc=key_crc(table), block_rows=BLOCK_ROWS,
                   block_crcs=block_crcs(columns, BLOCK_ROWS), **meta_fields)  # looked up now: a bench may vary it
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".run-{first:020d}-{last:020d}.{os.getpid()}.tmp"
    schema = RUN_SCHEMA.with_metadata(meta.encode())
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    fsync_file(tmp)
    path = directory / run_name(first, last, file_crc32(tmp))
    os.replace(tmp, path)
    fsync_dir(directory)
    return path
