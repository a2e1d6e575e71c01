"""The projection runner's threads (one loop per projection, ADR-017) and its clock.

Each projection does its rounds on its own thread, waiting ``poll_s`` (or a wake-up) when
idle: a handler that hangs or is slow holds its own thread and projection only. A thread
starts when the runner runs (or when a projection is added to a running runner) and ends at
stop or when its projection is removed. A loop that dies shows its projection "stalled"
with the error, like the whole runner's when it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Protocol

from es_actors.read.progress import ProjectionState

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Where the runner takes time from and how it waits (a test passes its own)."""

    def monotonic(self) -> float: ...

    def wall_us(self) -> int: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_us(self) -> int:
        return time.time_ns() // 1000

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class ProjectionLoops:
    """Starts, wakes and joins the projections' loop threads; ``step_one`` does one round."""

    def __init__(self, step_one: Callable[[ProjectionState], bool], poll_s: float) -> None:
        self.step_one = step_one
        self.poll_s = poll_s
        self.stopping = False
        self.running = False  # run() started the threads
        self.exited = False  # run() returned: every projection shows stalled
        self.error: str | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def run(self, states: Callable[[], Iterable[ProjectionState]]) -> None:
        """Start a thread per projection and return at :meth:`stop`."""
        try:
            with self._lock:
                self.running = True
                for st in states():
                    self._start(st)
            self._stopped.wait()
        except BaseException as exc:  # a bug here must show as stalled, not vanish
            self.error = f"projector loop stopped: {type(exc).__name__}: {exc}"
            log.exception("projector loop stopped")
        finally:
            self.exited = True

    def added(self, st: ProjectionState) -> None:
        """A projection joined the runner: its thread starts if the runner runs."""
        with self._lock:
            if self.running and not self.stopping:
                self._start(st)

    def _start(self, st: ProjectionState) -> None:
        if st.thread is None and not st.removed:
            st.thread = threading.Thread(target=self._loop, args=(st,), name=f"projection-{st.projection.name}", daemon=True)
            st.thread.start()

    def _loop(self, st: ProjectionState) -> None:
        try:
            while not self.stopping and not st.removed:
                st.wake.clear()
                if not self.step_one(st):
                    st.wake.wait(self.poll_s)
        except BaseException as exc:  # a bug here must show as stalled, not vanish
            st.loop_error = f"projection loop stopped: {type(exc).__name__}: {exc}"
            log.exception("projection %s: loop stopped", st.projection.name)

    def stop(self, states: Iterable[ProjectionState]) -> None:
        with self._lock:
            self.stopping = True
        self._stopped.set()
        for st in states:
            st.wake.set()

    @staticmethod
    def join(threads: Iterable[threading.Thread | None], timeout_s: float) -> None:
        """Join the threads within ``timeout_s`` in all (a hung handler's thread cannot be ended)."""
        deadline = time.monotonic() + timeout_s
        for t in threads:
            if t is not None and t is not threading.current_thread():
                t.join(timeout=max(0.0, deadline - time.monotonic()))
