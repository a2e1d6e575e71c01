"""A direct local link to a partition actor: the write path without Ray's per-call cost.

Measured here (benchmarks/ray_call_cost.py, ADR-007): a Ray actor call costs ~0.4-0.6 ms of
CPU on each side; a round trip over a local ``multiprocessing.connection`` costs ~20 us on
each side. So a client on the actor's node sends its batches over a loopback connection
that the actor opens, while Ray keeps what it is good at: placing, naming, restarting the
actor, and every control call. The connection is authenticated (HMAC challenge) with a
random key that only travels through Ray; it listens on 127.0.0.1 only.

The server side is :class:`DirectServer`; the client side is in ``channel.py``.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from multiprocessing.connection import Connection, Listener
from typing import Any, Callable

from .errors import EsActorsError

log = logging.getLogger(__name__)
HOST = "127.0.0.1"


class DirectServer:
    """Accepts local connections and answers each framed batch with ``handle(batch)``."""

    def __init__(self, handle: Callable[[Any], Any], name: str) -> None:
        self._handle = handle
        self.authkey = os.urandom(32)
        self._listener = Listener((HOST, 0), authkey=self.authkey)
        self.address: tuple[str, int] = self._listener.address  # type: ignore[assignment]
        self._closed = False
        threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except Exception as exc:  # closed listener, or a peer that failed the handshake
                if self._closed:
                    return
                log.warning("direct link: refused a connection: %s", exc)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    request = conn.recv_bytes()
                except (EOFError, OSError):
                    return
                try:
                    reply = ("ok", self._handle(pickle.loads(request)))
                except BaseException as exc:  # e.g. WriterFenced, or the actor was closed
                    reply = ("raise", exc)
                try:
                    data = pickle.dumps(reply, protocol=5)
                except Exception as exc:  # an unpicklable error: still answer, with its text
                    data = pickle.dumps(("raise", EsActorsError(f"cannot send the reply: {exc!r}")), protocol=5)
                try:
                    conn.send_bytes(data)
                except OSError as exc:
                    log.warning("direct link: cannot answer: %s", exc)
                    return

    def close(self) -> None:
        self._closed = True
        self._listener.close()
