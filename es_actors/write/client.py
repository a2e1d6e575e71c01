"""Client-side batching toward one partition actor.

At most one call is in flight per partition; whatever is submitted meanwhile waits and
goes as the next batch (adaptive batching, no timer: a lone command goes at once, a
crowd shares one call and one durable write). The queue is bounded: when it is full,
submitters wait up to ``submit_timeout_s`` and then get :class:`Overloaded`.

Batches travel over the actor's direct local link when the client runs on the actor's
node (es_actors/write/direct_link.py: ~20 us of CPU per call instead of Ray's ~0.5 ms), over the
same link inside TLS from another node (``remote_link``, es_actors/write/tls_link.py), else as Ray
actor calls. If the actor dies with a batch in flight, the batch is resent as-is once the
actor is back: every item carries a command id, so the actor answers a command it already
made durable from its dedup record instead of applying it twice.
"""

from __future__ import annotations

import _thread
import logging
import pickle
import threading
import time
from concurrent.futures import Future, InvalidStateError
from multiprocessing.connection import Connection
from typing import Any, Callable, Protocol

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from es_actors.config import StoreConfig
from es_actors.write.direct_link import LinkConnection, connect, shutdown_link
from es_actors.write.tls_link import MAX_FRAME
from es_actors.errors import CommandTimeout, EsActorsError, LinkRefused, Overloaded, StoreClosed
from es_actors.write.protocol import BatchItem, ItemResult, batch_to_wire, results_from_wire
from es_actors.runtime.cluster import actor_get, unwrap_actor_error

log = logging.getLogger(__name__)
REMOTE_RETRY_S = 30.0  # after the TLS link to another node failed, Ray calls for this long before trying again


class Sink(Protocol):
    def set_result(self, value: Any) -> None: ...
    def set_exception(self, exc: BaseException) -> None: ...


class ResultSlot:
    """A one-shot result for a blocked submitter: one raw lock, much cheaper than a Future."""

    __slots__ = ("_lock", "_value", "_error")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._value: Any = None
        self._error: BaseException | None = None

    def set_result(self, value: Any) -> None:
        self._value = value
        self._lock.release()

    def set_exception(self, exc: BaseException) -> None:
        self._error = exc
        self._lock.release()

    def result(self, timeout: float | None = None) -> Any:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError
        self._lock.release()
        if self._error is not None:
            raise self._error
        return self._value


Pending = tuple[BatchItem, Sink]


class PartitionChannel:
    def __init__(
        self,
        partition: int,
        actor: Any,
        config: StoreConfig,
        convert: Callable[[BatchItem, ItemResult], Any],
        observe_latency: Callable[[int, float], None],
        direct: bool = True,
    ) -> None:
        self.partition = partition
        self._actor = actor
        self._config = config
        self._convert = convert
        self._observe = observe_latency
        self._cond = threading.Condition()
        self._pending: list[Pending] = []
        self._in_flight = False
        self.calls = 0
        self.closed = False
        self._link: DirectLink | None = DirectLink(self) if direct else None

    def submit(self, items: list[BatchItem], sink: Callable[[], Sink] = Future) -> list[Any]:
        """Queue items; each gets a sink (a Future by default) that receives its result."""
        futures = [sink() for _ in items]
        deadline = time.monotonic() + self._config.submit_timeout_s
        with self._cond:
            while True:
                if self.closed:
                    raise StoreClosed(f"the store was closed; nothing was sent to partition {self.partition}")
                if not (self._pending and len(self._pending) + len(items) > self._config.max_pending):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded(
                        f"partition {self.partition}: {len(self._pending)} commands already queued "
                        f"(max_pending={self._config.max_pending}); nothing was sent, try again later"
                    )
                self._cond.wait(left)
            self._pending.extend(zip(items, futures))
            batch = None if self._in_flight else self._take_locked()
        if batch:
            self._send(batch, time.monotonic())
        return futures

    def _take_locked(self) -> list[Pending]:
        n = self._config.max_batch
        batch, self._pending = self._pending[:n], self._pending[n:]
        self._in_flight = bool(batch)
        self._cond.notify_all()
        return batch

    def _send(self, batch: list[Pending], first_sent: float) -> None:
        self.calls += 1
        if self._link is not None:
            self._link.send(batch, first_sent)
            return
        self._send_by_ray(batch, first_sent)

    def _send_by_ray(self, batch: list[Pending], first_sent: float) -> None:
        t0 = time.perf_counter()
        try:
            ref = self._actor.handle_batch.remote([item for item, _f in batch])
        except Exception as exc:  # e.g. an argument Ray cannot serialize: fail this batch, go on
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            self._on_done(batch, failed, t0, first_sent)
            return
        ref.future().add_done_callback(lambda f: self._on_done(batch, f, t0, first_sent))

    def close(self, drain_s: float) -> None:
        """Refuse new commands; let the queued and in-flight ones finish (up to ``drain_s``);
        fail whatever is still queued with StoreClosed (never sent); then close the link."""
        deadline = time.monotonic() + drain_s
        with self._cond:
            self.closed = True
            while self._pending or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            left_over, self._pending = self._pending, []
            self._cond.notify_all()
        self._fail(left_over, StoreClosed("the store was closed before this command was sent; nothing was sent"))
        if self._link is not None:
            self._link.close()

    def _on_done(self, batch: list[Pending], done: "Future[Any]", t0: float, first_sent: float) -> None:
        try:
            results = done.result()
        except (RayActorError, GetTimeoutError, ConnectionError, EOFError, OSError) as exc:
            if self.closed:  # the store let go of its actors: no resend
                self._fail(batch, CommandTimeout(
                    f"partition {self.partition}: the store was closed with this command in flight ({exc}); "
                    "the outcome is unknown: resubmit with the same command_id to learn it"
                ))
            elif time.monotonic() - first_sent < self._config.retry_deadline_s:
                log.warning("partition %d actor unavailable (%s); resending %d commands by id", self.partition, exc, len(batch))
                threading.Timer(0.2, self._send, (batch, first_sent)).start()
                return
            else:
                self._fail(batch, CommandTimeout(
                    f"partition {self.partition} actor unavailable for {self._config.retry_deadline_s:.0f}s ({exc}); "
                    "the outcome is unknown: resubmit with the same command_id to learn it"
                ))
        except BaseException as exc:  # e.g. the actor answers every call with WriterFenced
            self._fail(batch, unwrap_actor_error(exc))
        else:
            # Send what queued up meanwhile before delivering these results, so the actor
            # does not sit idle while this thread wakes the submitters.
            self._send_next()
            self._observe(len(batch), (time.perf_counter() - t0) * 1000)
            for (item, fut), result in zip(batch, results):
                try:
                    value = self._convert(item, result)
                except BaseException as exc:
                    value = exc
                _settle(fut, value)
            return
        self._send_next()

    def _send_next(self) -> None:
        with self._cond:
            nxt = self._take_locked()
        if nxt:
            self._send(nxt, time.monotonic())

    @staticmethod
    def _fail(batch: list[Pending], exc: BaseException) -> None:
        for _item, fut in batch:
            _settle(fut, exc)


def _settle(sink: Sink, value: Any) -> None:
    """Hand a result or error to its waiter; a Future the caller cancelled just drops it.

    What is not an ``Exception`` (a ``SystemExit`` raised in user code and carried back) must
    not end the caller's process: it arrives as an es_actors error naming it."""
    if isinstance(value, BaseException) and not isinstance(value, Exception):
        value = EsActorsError(f"{type(value).__name__} raised in the partition actor: {_safe_text(value)}")
    try:
        if isinstance(value, BaseException):
            sink.set_exception(value)
        else:
            sink.set_result(value)
    except InvalidStateError:
        pass


class DirectLink:
    """Carries one channel's batches over the actor's direct connection (loopback, or TLS
    from another node).

    The thread that takes a batch (a submitter, or this link's thread delivering the previous
    batch) writes it to the connection itself; the link's thread only waits for replies. A
    lone command thus wakes one thread of this process (its submitter, when the reply is in),
    not two: handing each batch to the link's thread cost a wake-up and a GIL hand-off per
    command, which CPU-bound neighbours (readers on the same cores) turn into milliseconds.
    The channel keeps one batch in flight, so the reply that arrives is the in-flight batch's.

    What is not the fast path goes to the link's thread: connecting (an actor call for the
    endpoint), the TLS link from another node, handing batches back to Ray calls when the actor
    is on another node and ``remote_link`` is off, and every failure. A broken connection is
    reported like a dead actor (resend by command id); the next batch reconnects to the
    restarted actor's new endpoint.
    """

    def __init__(self, channel: PartitionChannel) -> None:
        self._channel = channel
        self._cv = threading.Condition()
        # Held while a thread writes to the connection, and to close or shut it down: a
        # connection is never closed under a writer (its descriptor could be reused at once).
        self._send_lock = threading.Lock()
        self._slow: list[tuple[list[Pending], float]] = []  # batches for the link's thread to send
        self._inflight: tuple[list[Pending], float, float] | None = None  # (batch, first_sent, t0)
        self._closed = False
        self._ended = False  # the link's thread has left (closed): a batch sent now would wait forever
        self._conn: LinkConnection | None = None
        self.transport: str | None = None  # "local" (loopback, clear) or "tls" (from another node) once connected
        self._refused, self._refused_logged = 0, 0.0
        self._remote_down_until = 0.0
        self._thread = threading.Thread(target=self._run, name=f"es-link-p{channel.partition}", daemon=True)
        self._thread.start()

    def send(self, batch: list[Pending], first_sent: float) -> None:
        """Write ``batch`` to the live loopback connection now, from this thread; otherwise (no
        connection yet, or TLS, whose socket one thread at a time uses) the link's thread sends it."""
        with self._cv:
            conn = self._conn
            if self._ended:  # e.g. a resend timed to fire after close(): no thread would send it
                conn = None
            elif not isinstance(conn, Connection) or self._inflight is not None:
                self._slow.append((batch, first_sent))
                self._cv.notify_all()
                return
            else:
                self._inflight = entry = (batch, first_sent, time.perf_counter())
        if conn is None:  # fail it (the closed channel answers CommandTimeout), never leave it waiting
            self._deliver_error((batch, first_sent, time.perf_counter()), ConnectionError("the direct link was closed"))
            return
        self._write(conn, entry)

    def _write(self, conn: LinkConnection, entry: tuple[list[Pending], float, float]) -> None:
        """Send the in-flight ``entry``'s batch; a failure is the receiver's to deliver (it sees the
        connection fail), but for a batch that cannot be pickled, failed here.

        ``entry`` is this attempt (compared by identity): if the receiver failed it meanwhile, the
        channel may already be resending the same batch (the same list) in a new entry, which is
        not this thread's to requeue or fail."""
        batch, first_sent, _t0 = entry
        try:
            data = pickle.dumps(batch_to_wire([item for item, _f in batch]), protocol=5)
            if len(data) > MAX_FRAME:  # the TLS link refuses it: no resend would ever go through
                raise EsActorsError(f"a batch of {len(data):,} bytes is over the link's limit of {MAX_FRAME:,} "
                                    "bytes; nothing was sent: submit fewer or smaller commands at once")
        except BaseException as exc:  # e.g. a command that cannot be pickled: fail this batch, go on
            with self._cv:
                mine = self._inflight is entry
                if mine:
                    self._inflight = None
            if mine:
                self._deliver_error(entry, exc)
            return
        with self._send_lock:
            if self._conn is not conn:  # the receiver dropped it meanwhile
                with self._cv:
                    mine = self._inflight is entry
                    if mine:  # never sent: the link's thread connects again and sends it
                        self._inflight = None
                        self._slow.append((batch, first_sent))
                        self._cv.notify_all()
                return  # else the receiver took it, to fail it (resent by command id)
            try:
                conn.send_bytes(data)
            except (OSError, ValueError):  # broken connection: the receiver fails the batch
                shutdown_link(conn)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        with self._send_lock:
            if self._conn is not None:
                shutdown_link(self._conn)  # wakes the receiver, which closes it

    def _connect(self) -> LinkConnection | None:
        """The live connection, or None when the actor is on another node and the TLS link is off
        (``remote_link``, here or in the actor) or unreachable (use Ray calls)."""
        if self._conn is None:
            if time.monotonic() < self._remote_down_until:
                raise LinkRefused("the TLS link failed a moment ago; Ray calls meanwhile")
            try:
                here = ray.get_runtime_context().get_node_id()
            except Exception:  # e.g. a Ray Client ("ray://") session has no local node
                here = None
            ask = here if self._channel._config.remote_link else None  # None: the loopback link only
            node_id, address, key, cert = actor_get(self._channel._actor.endpoint.remote(ask), timeout=30)
            if address is None or (node_id != here and cert is None):
                return None
            try:
                conn = connect(address, key, tls_cert=cert)
            except LinkRefused:
                if cert is not None:  # e.g. a firewall between the nodes: don't wait for it on every batch
                    self._remote_down_until = time.monotonic() + REMOTE_RETRY_S
                raise
            self.transport = "local" if cert is None else "tls"
            with self._cv:
                self._conn = conn
        return self._conn

    def _run(self) -> None:
        """Send what the fast path could not; wait for the in-flight batch's reply; deliver it."""
        while True:
            with self._cv:
                # A loopback connection is always read (a sender writes to it and does not wake
                # this thread); a TLS one only while a batch is in flight (this thread sends too).
                while not (self._closed or self._slow or (self._conn is not None and (
                        isinstance(self._conn, Connection) or self._inflight is not None))):
                    self._cv.wait()
                if self._slow and self._inflight is None:
                    batch, first_sent = self._slow.pop(0)
                elif self._closed and self._inflight is None:
                    self._ended = True
                    break
                else:
                    batch = []
            if batch:
                self._send_slow(batch, first_sent)
                continue
            self._receive()
        self._drop_connection()

    def _drop_connection(self) -> None:
        """Close the connection (this thread only), never under a writer."""
        with self._cv:
            conn, self._conn = self._conn, None
        if conn is not None:
            with self._send_lock:
                conn.close()

    def _send_slow(self, batch: list[Pending], first_sent: float) -> None:
        """Connect if need be, then send as the fast path does; or hand the batch to Ray calls."""
        try:
            conn = self._connect()
        except LinkRefused as exc:  # a flooded or refusing link: this batch goes by Ray
            self._refused += 1
            if time.monotonic() - self._refused_logged > 10:
                log.warning("partition %d: direct link refused (%s); %d batches sent by Ray calls instead",
                            self._channel.partition, exc, self._refused)
                self._refused_logged = time.monotonic()
            self._channel._send_by_ray(batch, first_sent)
            return
        except BaseException as exc:  # e.g. the actor is dead: the channel decides (resend by id)
            self._deliver_error((batch, first_sent, time.perf_counter()), exc)
            return
        if conn is None:  # another node: this channel goes through Ray from now on
            with self._cv:
                later, self._slow = self._slow, []
                self._closed = True  # this thread ends once nothing is in flight
                self._cv.notify_all()
            self._channel._link = None
            self._channel.calls -= 1
            for b, f in [(batch, first_sent), *later]:
                self._channel._send(b, f)
            return
        with self._cv:
            self._inflight = entry = (batch, first_sent, time.perf_counter())
        self._write(conn, entry)

    def _receive(self) -> None:
        """The in-flight batch's reply (or the connection's failure), delivered to the channel."""
        conn = self._conn
        assert conn is not None
        try:
            tag, value = pickle.loads(conn.recv_bytes())
        except BaseException as exc:  # transport or actor failure: the channel decides
            if isinstance(exc, (ConnectionError, EOFError, OSError, ValueError)) or self._closed:
                self._drop_connection()  # first: a sender that comes later takes the slow path
            with self._cv:
                taken, self._inflight = self._inflight, None  # a batch sent to it, or racing to be
            if taken is not None:
                self._deliver_error(taken, exc)
            return
        with self._cv:
            taken, self._inflight = self._inflight, None
        if taken is None:  # a reply with nothing in flight: not ours to trust
            log.warning("partition %d: direct link sent an unexpected reply; reconnecting", self._channel.partition)
            self._drop_connection()
            with self._cv:  # a batch a sender set in flight meanwhile: failed, so it is resent by id
                taken, self._inflight = self._inflight, None
            if taken is not None:
                self._deliver_error(taken, ConnectionError("the direct link sent an unexpected reply"))
            return
        done: Future[Any] = Future()
        if tag == "ok":
            done.set_result(results_from_wire(value))
        else:
            done.set_exception(value)
        self._deliver(taken, done)

    def _deliver_error(self, taken: tuple[list[Pending], float, float], exc: BaseException) -> None:
        done: Future[Any] = Future()
        done.set_exception(exc)
        self._deliver(taken, done)

    def _deliver(self, taken: tuple[list[Pending], float, float], done: "Future[Any]") -> None:
        batch, first_sent, t0 = taken
        try:
            self._channel._on_done(batch, done, t0, first_sent)
        except Exception:  # this thread must outlive any one delivery
            log.exception("partition %d: delivering a batch failed", self._channel.partition)


def _safe_text(exc: BaseException) -> str:
    """An error's text, or its type's name if even that raises (hostile ``__str__``)."""
    try:
        return str(exc)[:500]
    except BaseException:
        return f"<{type(exc).__name__} without a readable message>"
