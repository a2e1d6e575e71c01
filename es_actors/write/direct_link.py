"""A direct local link to a partition actor: the write path without Ray's per-call cost.

Measured here (benchmarks/ray_call_cost.py, ADR-007): a Ray actor call costs ~0.4-0.6 ms of
CPU on each side; a round trip over a local ``multiprocessing.connection`` costs ~20 us on
each side. So a client on the actor's node sends its batches over a loopback connection
that the actor opens, while Ray keeps what it is good at: placing, naming, restarting the
actor, and every control call. It listens on 127.0.0.1, in clear. For a client on another node
the actor opens a second listener on its node's address that speaks TLS first (es_actors/write/tls_link.py:
a throwaway certificate the client pins) and then the same handshake and frames.

Authentication is our own mutual HMAC-SHA256 challenge (:func:`connect`, :meth:`DirectServer._admit`)
with a random key that only travels through Ray. Not ``multiprocessing.connection``'s: on
Python 3.11 it runs in ``Listener.accept`` (one silent peer blocks every later client), has no
deadline, and compares digests with ``==``. Here each handshake runs on its own thread with a
deadline, at most ``max_pending`` run at once (a new connection beyond that closes the one that
has waited longest: a real client answers in well under a millisecond), digests are compared
with :func:`hmac.compare_digest`, and refusals are logged at most once per interval. After the
handshake the socket carries ``multiprocessing.connection`` frames, as before.

The server side is :class:`DirectServer`; the client side uses :func:`connect` (es_actors/write/client.py).
What travels: pickled lists of the typed messages of es_actors/write/protocol.py.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import socket
import ssl
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Union

from es_actors.errors import EsActorsError, LinkRefused
from es_actors.write.tls_link import FramedConnection, ServerIdentity, client_context

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
HANDSHAKE_TIMEOUT_S = 2.0
MAX_PENDING_HANDSHAKES = 16
BACKLOG = 128
_MAGIC = b"es-actors-link/1"  # 16 bytes: protocol and version
_NONCE = 32
_DIGEST = 32  # HMAC-SHA256


def _proof(key: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, role + first + second, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    """``n`` bytes before ``deadline`` (monotonic), else TimeoutError; EOF is a ConnectionError."""
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer before the handshake deadline")
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the peer closed the connection during the handshake")
        buf += chunk
    return buf


LinkConnection = Union[Connection, FramedConnection]


def shutdown_link(conn: LinkConnection) -> None:
    """Shut the connection's socket down (both ways) without closing its descriptor: a thread
    blocked on it wakes with EOF and closes it (closing here could let the kernel hand the same
    descriptor to a new connection under that thread)."""
    try:
        if isinstance(conn, FramedConnection):
            conn.shutdown()
            return
        dup = socket.socket(fileno=os.dup(conn.fileno()))  # shutdown acts on the socket, not the descriptor
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()
    except (OSError, ValueError):  # already closed
        pass


def _as_connection(sock: socket.socket) -> LinkConnection:
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if isinstance(sock, ssl.SSLSocket):  # Connection needs a plain descriptor
        return FramedConnection(sock)
    return Connection(sock.detach())


def connect(address: tuple[str, int], key: bytes, timeout: float = 5.0, tls_cert: bytes | None = None) -> LinkConnection:
    """Open an authenticated connection to a :class:`DirectServer`.

    Mutual: the client proves it holds ``key``, then the server proves it too, so a batch is
    never sent to another process that took over a dead actor's port. With ``tls_cert`` (a
    server on another node) the handshake and every frame run inside TLS that trusts exactly
    that certificate. Raises :class:`LinkRefused` (a ConnectionError: the channel reconnects
    with a fresh endpoint).
    """
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except OSError as exc:
        raise LinkRefused(f"direct link to {address[0]}:{address[1]}: cannot connect: {exc}") from None
    try:
        if tls_cert is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = client_context(tls_cert).wrap_socket(sock)  # verifies the pinned certificate
        hello = _recv_exact(sock, len(_MAGIC) + _NONCE, deadline)
        if hello[: len(_MAGIC)] != _MAGIC:
            raise LinkRefused(f"direct link to {address[0]}:{address[1]}: not an es_actors partition actor")
        server_nonce, client_nonce = hello[len(_MAGIC):], os.urandom(_NONCE)
        sock.sendall(client_nonce + _proof(key, b"client", server_nonce, client_nonce))
        answer = _recv_exact(sock, _DIGEST, deadline)
        if not hmac.compare_digest(answer, _proof(key, b"server", client_nonce, server_nonce)):
            raise LinkRefused(f"direct link to {address[0]}:{address[1]}: the server does not hold the key")
        return _as_connection(sock)
    except LinkRefused:
        sock.close()
        raise
    except (OSError, ConnectionError) as exc:  # timeouts, a refusal (the server hangs up), a TLS failure
        sock.close()
        raise LinkRefused(
            f"direct link to {address[0]}:{address[1]}: handshake failed ({type(exc).__name__}: {exc}); "
            "a wrong key is refused by closing the connection"
        ) from None


class _RateLimitedWarning:
    """At most one warning per ``interval_s``; the next one says how many were held back."""

    def __init__(self, name: str, interval_s: float = 10.0) -> None:
        self._name = name
        self._interval = interval_s
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return
            held, self._held, self._next = self._held, 0, now + self._interval
        more = f" ({held} more since the last report, not logged)" if held else ""
        log.warning("direct link %s: %s%s", self._name, message, more)


class _Waiting:
    """A connection in its handshake; ``sock`` becomes the TLS socket once wrapped."""

    __slots__ = ("sock", "since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.since = time.monotonic()


class DirectServer:
    """Accepts connections and answers each framed batch with ``handle(batch)``.

    By default on 127.0.0.1 in clear (clients on this node). With ``tls`` (a
    :class:`ServerIdentity`) on ``host``, for clients on other nodes: a TLS handshake first, then
    the same HMAC handshake inside it, under the same deadline and pending limit.
    """

    def __init__(
        self,
        handle: Callable[[Any], Any],
        name: str,
        *,
        host: str = HOST,
        tls: ServerIdentity | None = None,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        max_pending: int = MAX_PENDING_HANDSHAKES,
    ) -> None:
        self._handle = handle
        self._name = name
        self._tls = tls
        self._timeout = handshake_timeout_s
        self._max_pending = max_pending
        self.authkey = os.urandom(32)
        self._sock = socket.create_server((host, 0), backlog=BACKLOG)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._pending: set[_Waiting] = set()  # connections not yet authenticated
        self._lock = threading.Lock()
        self._refused = _RateLimitedWarning(name)
        self._closed = False
        threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True).start()

    def certificate(self) -> bytes | None:
        """The PEM a client on another node pins (None on the loopback link)."""
        return self._tls.certificate() if self._tls is not None else None

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _peer = self._sock.accept()
            except OSError as exc:  # the listener was shut down, or e.g. out of file descriptors
                if self._closed:
                    self._sock.close()
                    return
                self._refused(f"accept failed: {exc}")
                time.sleep(0.05)
                continue
            evicted = None
            waiting = _Waiting(sock)
            with self._lock:
                if len(self._pending) >= self._max_pending:
                    evicted = min(self._pending, key=lambda w: w.since)
                    self._pending.discard(evicted)
                    _shutdown(evicted.sock)  # its handshake thread sees EOF, closes it and ends
                self._pending.add(waiting)
            if evicted is not None:
                self._refused(
                    f"{self._max_pending} connections were waiting for their handshake; closed the oldest"
                )
            threading.Thread(target=self._admit, args=(waiting,), name=f"{self._name}-handshake", daemon=True).start()

    def _admit(self, waiting: _Waiting) -> None:
        """(TLS, then) challenge the peer, prove the key back, then serve it; any failure just closes it."""
        deadline = time.monotonic() + self._timeout
        sock = waiting.sock
        try:
            sock.settimeout(self._timeout)
            if self._tls is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self._lock:  # eviction must shut down the socket that is in use
                    sock = waiting.sock = self._tls.context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False)
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.do_handshake()  # CPython bounds the whole handshake by the timeout
            server_nonce = os.urandom(_NONCE)
            sock.sendall(_MAGIC + server_nonce)
            answer = _recv_exact(sock, _NONCE + _DIGEST, deadline)
            client_nonce, digest = answer[:_NONCE], answer[_NONCE:]
            if not hmac.compare_digest(digest, _proof(self.authkey, b"client", server_nonce, client_nonce)):
                raise LinkRefused("wrong key")
            sock.sendall(_proof(self.authkey, b"server", client_nonce, server_nonce))
        except (OSError, ConnectionError, LinkRefused, ValueError) as exc:
            with self._lock:
                was_waiting = waiting in self._pending
                self._pending.discard(waiting)
            sock.close()
            if was_waiting:  # an evicted connection was reported when it was evicted
                self._refused(f"refused a connection: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            if waiting not in self._pending:  # evicted just as it finished
                sock.close()
                return
            self._pending.discard(waiting)
        self._serve(_as_connection(sock))

    def _serve(self, conn: LinkConnection) -> None:
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
                    log.warning("direct link %s: cannot answer: %s", self._name, exc)
                    return

    def close(self) -> None:
        """Stop accepting; connections still in their handshake are cut off."""
        self._closed = True
        _shutdown(self._sock)  # wakes the accept thread (close alone may not), which closes it
        with self._lock:
            pending = [w.sock for w in self._pending]
        for sock in pending:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    """Wake whatever thread waits on ``sock``; that thread closes it (closing here could let the
    kernel hand the same descriptor to a new connection under the waiting thread)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
