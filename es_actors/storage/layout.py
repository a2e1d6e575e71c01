"""Where a store keeps what, and the store's own descriptor (``store.json``).

The partition count and the hash from aggregate to partition are fixed when a store is
created and recorded in ``store.json``, so every process maps an aggregate the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from es_actors.errors import EsActorsError, StoreCorrupted, StoreFormatOutdated, invalid_file
from es_actors.storage.api import ObjectIncomplete
from es_actors.storage.files import fsync_dir, replace_durably
from es_actors.storage.uris import LOCAL_SCHEMES, S3_SCHEME, format_store_uri, parse_store_uri

FORMAT_VERSION = 2  # 2: self-describing tail frames, segment CRCs in names, DURABLE marks (ADR-009)
READABLE_FORMATS = (1, 2)
PARTITION_HASH = "blake2b-64"


class StoreDescriptor(BaseModel):
    format_version: int = FORMAT_VERSION
    store_id: str
    partitions: int
    partition_hash: str = PARTITION_HASH


def partition_of(aggregate_type: str, aggregate_id: str, partitions: int) -> int:
    """Stable across processes and Python versions (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{aggregate_type}\x00{aggregate_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def read_models_dir(store_id: str, base: str | None = None) -> Path:
    """Where the read models of the object-storage store ``store_id`` live on this node: under
    ``base`` (StoreConfig.read_model_dir), else $ES_ACTORS_READ_MODELS, else the user's cache; one
    subdirectory per store id, so a store made anew at the same prefix never meets an old read
    model's checkpoints."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", store_id) or store_id in {".", ".."}:
        raise StoreCorrupted(f"store.json names the store id {store_id!r}, which cannot name a directory")
    chosen = base or os.environ.get("ES_ACTORS_READ_MODELS")
    root = Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "es_actors" / "read-models"
    return root.resolve() / store_id


def resolve_local_root(uri: str | os.PathLike[str]) -> Path:
    """The directory of a local-disk store URI (a plain path or ``file://``); other schemes are
    refused with an EsActorsError by :mod:`es_actors.storage.backends`, which maps schemes."""
    from es_actors.storage.backends import local_root  # backends imports the backends, which import this

    return local_root(uri)


@dataclass(frozen=True)
class StoreLayout:
    root: Path  # for s3: /bucket/prefix, a name (never a local directory)
    scheme: str = ""  # "": local disk; otherwise the backend the URI chose (storage/backends.py)
    endpoint: str | None = None  # s3: the server's URL when not AWS's (or boto3's AWS_ENDPOINT_URL)
    #: An object-storage store's read models: a directory on this node (set by Store.open, see
    #: :func:`read_models_dir`); a local store keeps them under its root.
    read_models: Path | None = field(default=None, compare=False)

    @classmethod
    def from_uri(cls, uri: str | os.PathLike[str]) -> "StoreLayout":
        """The layout a store URI names (EsActorsError for a scheme no backend serves)."""
        parsed = parse_store_uri(uri)
        return cls(parsed.path, "" if parsed.scheme in LOCAL_SCHEMES else parsed.scheme, parsed.endpoint)

    @property
    def uri(self) -> str:
        """What :meth:`from_uri` reads back: the plain path of a local store, else ``scheme:///path``
        (``s3://bucket/prefix``)."""
        return format_store_uri(self.scheme, self.root, self.endpoint)

    @property
    def remote(self) -> bool:
        """The store lives on object storage, not in a local directory."""
        return self.scheme == S3_SCHEME

    @classmethod
    def local(cls, uri: str | os.PathLike[str], what: str) -> "StoreLayout":
        """The layout of a local-disk store URI; EsActorsError naming ``what`` for another backend's
        (instead of reading the URI's text as a directory name)."""
        layout = cls.from_uri(uri)
        layout.require_local(what)
        return layout

    def require_local(self, what: str) -> None:
        """EsActorsError unless this is a local-disk store (``what`` reads local files)."""
        if self.scheme:
            raise EsActorsError(f"{self.uri}: {what} read local Parquet and tail files; not supported on "
                                f"{self.scheme} stores yet (adrs/ADR-014-storage-interface.md)")

    @property
    def read_model_root(self) -> Path:
        """The local directory that holds the store's read-model file (ADR-017, ADR-019)."""
        if not self.scheme:
            return self.root
        if self.read_models is None:
            raise EsActorsError(f"{self.uri}: a store on object storage keeps its read models in a local directory "
                                "that Store.open chooses; open the store (Store.open) to read them")
        return self.read_models

    def prepare_read_model_root(self) -> Path:
        """The read-model directory, made if missing; EsActorsError naming ``read_model_dir`` if it cannot
        be (a file there, no permission): said where the store is opened, not by a projector's traceback."""
        path = self.read_model_root
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(f"no write permission on {path}")
        except OSError as exc:
            raise EsActorsError(f"{self.uri}: the read models cannot live in {path} (read_model_dir, or "
                                f"$ES_ACTORS_READ_MODELS): {type(exc).__name__}: {exc.strerror or exc}") from None
        return path

    def with_read_models(self, store_id: str, base: str | None) -> "StoreLayout":
        """This layout with its read-model directory chosen (a local store: unchanged)."""
        if not self.scheme:
            return self
        return dataclasses.replace(self, read_models=read_models_dir(store_id, base))

    @property
    def descriptor_path(self) -> Path:
        return self.root / "store.json"

    def log_dir(self, partition: int) -> Path:
        return self.root / "log" / f"p{partition:04d}"

    def tail_dir(self, partition: int) -> Path:
        return self.root / "tail" / f"p{partition:04d}"

    @property
    def sealed_glob(self) -> str:
        """The path plain DuckDB reads: every sealed event exactly once (local disk only)."""
        self.require_local("the sealed glob (use Store.sealed_dataset() elsewhere)")
        return str(self.root / "log" / "*" / "current" / "*.parquet")

    def read_descriptor(self) -> StoreDescriptor | None:
        """``store.json``, or None if there is none; EsActorsError if the directory holds the other
        backend's store (say which URI opens it, instead of reading its files as damage)."""
        from es_actors.storage.backends import foreign_store

        if (why := foreign_store(self)) is not None:
            raise EsActorsError(why)
        try:
            if self.scheme:
                from es_actors.storage.backends import blob_store_of

                text = blob_store_of(self).get("store.json").decode()
            else:
                text = self.descriptor_path.read_text()
            desc = StoreDescriptor.model_validate_json(text)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise EsActorsError(f"{self.root} is not an es_actors store (not a directory)") from None
        except EsActorsError:  # e.g. the object store did not answer: say that, not "corrupted"
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            where = f"{self.uri} (store.json)" if self.remote else str(self.descriptor_path)
            raise StoreCorrupted(f"{where} is not a store descriptor es_actors can read: {invalid_file(exc)}") from None
        except (OSError, ObjectIncomplete) as exc:
            where = f"{self.uri} (store.json)" if self.remote else str(self.descriptor_path)
            raise StoreCorrupted(f"{where} cannot be read: {invalid_file(exc)}") from None
        if desc.format_version not in READABLE_FORMATS:
            raise EsActorsError(
                f"{self.root}: store format {desc.format_version} is newer than this es_actors reads "
                f"(formats {READABLE_FORMATS})"
            )
        return desc

    def write_descriptor(self, desc: StoreDescriptor) -> None:
        """Replace ``store.json`` atomically and durably (an upgrade's last step)."""
        replace_durably(self.descriptor_path, json.dumps(desc.model_dump(), indent=2).encode())
        fsync_dir(self.root)

    def create_or_check(self, partitions: int | None, default_partitions: int) -> StoreDescriptor:
        """Create ``store.json`` on first use; afterwards the recorded partition count rules."""
        existing = self.read_descriptor()
        if existing is not None:
            if existing.format_version < FORMAT_VERSION:
                raise StoreFormatOutdated(
                    f"{self.root}: store format {existing.format_version} can be read (read_only=True) but not "
                    f"written by this es_actors (format {FORMAT_VERSION}); upgrade it once, with no writer "
                    "running: `es-actors upgrade --store PATH` (or es_actors.upgrade_store(PATH))"
                )
            if partitions is not None and partitions != existing.partitions:
                raise EsActorsError(
                    f"{self.root} was created with {existing.partitions} partitions; cannot open it with {partitions}"
                )
            return existing
        if self.remote:
            from es_actors.storage.backends import blob_store_of

            holds_log = bool(blob_store_of(self).list("p0000/owners/"))  # every open of a store claims partition 0
        else:
            holds_log = any(self.root.glob("p[0-9]*")) if self.scheme else (
                (self.root / "log").exists() or (self.root / "tail").exists())
        if holds_log:
            raise StoreCorrupted(
                f"{self.descriptor_path} is missing but {self.root} holds a log: refusing to create a new store "
                "over it (its partition count and hash would be guessed). Restore store.json"
            )
        desc = StoreDescriptor(store_id=uuid.uuid4().hex, partitions=partitions or default_partitions)
        if desc.partitions < 1:
            raise EsActorsError("partitions must be >= 1")
        if not self.remote:
            self.root.mkdir(parents=True, exist_ok=True)
        if self.scheme:  # whole objects: put-if-absent (a concurrent creator's wins), no link or rename
            from es_actors.storage.backends import blob_store_of

            blob_store_of(self).put_if_absent("store.json", json.dumps(desc.model_dump(), indent=2).encode())
            result = self.read_descriptor()
            assert result is not None
            return result
        tmp = self.root / f".store.json.{os.getpid()}.new"
        tmp.write_text(json.dumps(desc.model_dump(), indent=2))
        try:
            os.link(tmp, self.descriptor_path)  # fails if a concurrent creator won the race
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        result = self.read_descriptor()
        assert result is not None
        return result
