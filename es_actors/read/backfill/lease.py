"""Who runs a backfill on object storage: a lease in the bucket, instead of the local ``flock``.

An object store has put-if-absent and no overwrite, so the lease is a run of numbered records
under ``<dir>/lease/``: the highest whole one says who holds it and until when::

    lease/0000000007.json   {"owner": "3f2a...", "holder": "host:pid", "expires_at": 1764540000.0}

- taking it: the highest record is absent, released (owner ""), expired, or written by the
  same ``owner`` (a restarted Ray actor keeps its id): put-if-absent of the next number; of two
  takers exactly one gets it, the other is busy;
- keeping it: a thread writes the next record every :data:`RENEW_S` seconds; a renewal that finds
  its number taken has lost the lease (it expired, someone took over): :attr:`Lease.lost` is set
  and the holder stops at its next look (the backfill driver treats it like a stop request);
- releasing it: a record with owner "" (never a delete: a stalled old holder's late renewal
  would then land on the freed number and believe it still held it).

Older records are deleted after each write. How long: :data:`TTL_S` = 30 s. A crashed driver's
lease frees itself that long after its last renewal, so a backfill started again after a crash
waits at most that long (it is refused as busy meanwhile, with the seconds left); it is six
renewal periods, so a holder survives five renewals in a row that fail or stall (each S3 request
is bounded at seconds, storage.objects.s3.client_config) before another can take over, and it
covers clock differences between nodes (NTP keeps them well under a second). Two drivers at once
are in any case not harmful to the result, only wasteful: checkpoints are put-if-absent and an
install replaces the version's build whole.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from pydantic import BaseModel, ConfigDict, ValidationError

from es_actors.errors import EsActorsError
from es_actors.storage.api import BlobStore, ObjectIncomplete

TTL_S = 30.0
RENEW_S = 5.0


class LeaseRecord(BaseModel):
    """One lease record as kept in the bucket (anything else there counts as a torn record)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    owner: str
    holder: str = ""
    expires_at: float


class LeaseHeld(EsActorsError):
    """Another live holder has the lease."""


def _number(key: str) -> int:
    return int(key.rsplit("/", 1)[-1].split(".")[0])


class Lease:
    """The lease records under ``prefix`` (ending in ``/``) of a blob store."""

    def __init__(self, blobs: BlobStore, prefix: str, ttl_s: float = TTL_S, renew_s: float = RENEW_S) -> None:
        self.blobs = blobs
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.owner = ""
        self.number = 0
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> tuple[int, LeaseRecord | None]:
        """(the highest record's number, its content; None when there is none, it is not whole, or it is
        not a lease record: such a record counts as free, its number as taken)."""
        keys = [k for k in self.blobs.list(self.prefix) if k.endswith(".json") and k.rsplit("/", 1)[-1][:-5].isdigit()]
        for key in sorted(keys, key=_number, reverse=True):
            try:
                return _number(key), LeaseRecord.model_validate_json(self.blobs.get(key))
            except FileNotFoundError:
                continue  # deleted after a newer one was written
            except (ObjectIncomplete, ValidationError, ValueError):
                return _number(key), None  # torn by a crash (or not a lease record)
        return 0, None

    def held_by_other(self, owner: str = "") -> str | None:
        """Why the lease is held by someone else now (None: free, expired, or ``owner``'s)."""
        _n, rec = self.current()
        if rec is None or not rec.owner or rec.owner == owner:
            return None
        left = rec.expires_at - time.time()
        if left <= 0:
            return None
        return f"held by {rec.holder!r} (its lease runs {left:.0f} s more: a crashed holder frees it then)"

    def acquire(self, owner: str | None = None) -> None:
        """Take the lease (LeaseHeld if another live holder has it) and keep it renewed."""
        owner = owner or uuid.uuid4().hex
        n, _rec = self.current()
        why = self.held_by_other(owner)
        if why is not None:
            raise LeaseHeld(why)
        if not self._put(n + 1, owner):
            raise LeaseHeld("taken by another run at the same moment")
        self.owner, self.number, self.lost = owner, n + 1, False
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="backfill-lease", daemon=True)
        self._thread.start()

    def _put(self, number: int, owner: str) -> bool:
        record = {"owner": owner, "holder": f"{socket.gethostname()}:{os.getpid()}",
                  "expires_at": time.time() + self.ttl_s if owner else 0.0}
        if not self.blobs.put_if_absent(f"{self.prefix}{number:010d}.json", json.dumps(record).encode()):
            return False
        for key in self.blobs.list(self.prefix):
            if key.endswith(".json") and key.rsplit("/", 1)[-1][:-5].isdigit() and _number(key) < number:
                self.blobs.delete(key)
        return True

    def renew(self) -> bool:
        """Write the next record; False (and :attr:`lost` set) if the lease is lost: its number was
        taken, or a newer holder's record is above it (a holder that stalled past the expiry may find
        its next number free again, because the new holder deletes the records below its own), so the
        highest record is looked at after the write too."""
        if not self._still_mine() or not self._put(self.number + 1, self.owner):
            self.lost = True
            return False
        self.number += 1
        if not self._still_mine():
            self.lost = True
            return False
        return True

    def _still_mine(self) -> bool:
        """Whether the highest record is this holder's (owners are unique: a fresh id per run, or a
        Ray actor's id); a write that went in before its request failed counts as ours."""
        n, rec = self.current()
        if rec is None or rec.owner != self.owner or n < self.number:
            return False
        self.number = n
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001 - a failed request: try again at the next period (TTL_S covers it)
                continue

    def crash(self) -> None:
        """Stop renewing without releasing (tests: what a killed holder leaves)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def release(self) -> None:
        """Stop renewing and mark the lease free (nothing if it was lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if self.owner and not self.lost:
            try:
                self._put(self.number + 1, "")
            except Exception:  # noqa: BLE001 - not written: it expires by itself within TTL_S
                pass
        self.owner = ""
