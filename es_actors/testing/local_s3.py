"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's server (``moto[server]``),
started in this process on a free port and stopped at exit. Clients talk HTTP to it with boto3 like
to any S3 endpoint; nothing is mocked in the client.

``single_threaded=True`` serves one request at a time (a race between two writers then cannot pass
by the luck of interleaving inside the server).
"""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass
from typing import Any

#: Credentials for the local server only (moto accepts any); never a real account's.
LOCAL_ACCESS_KEY = "es-actors-local-test"
LOCAL_SECRET_KEY = "es-actors-local-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class LocalS3:
    """A running local server: its endpoint, and a client for it."""

    endpoint_url: str
    server: Any

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=LOCAL_ACCESS_KEY,
                            aws_secret_access_key=LOCAL_SECRET_KEY, region_name=REGION)

    def bucket(self, name: str) -> str:
        """``name`` created if it does not exist yet."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def stop(self) -> None:
        self.server.stop()


_lock = threading.Lock()
_shared: LocalS3 | None = None


def start_local_s3(single_threaded: bool = False) -> LocalS3:
    """A new server on 127.0.0.1 (a free port), stopped at exit."""
    import logging

    from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app
    from werkzeug.serving import make_server

    class _Server(ThreadedMotoServer):  # type: ignore[misc]
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(self._ip_address, self._port, app, threaded=not single_threaded)
            self._server_ready_event.set()
            self._server.serve_forever()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = _Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = LocalS3(f"http://{host}:{port}", server)
    atexit.register(s3.stop)
    return s3


class _ServerProcess:
    """moto's server as a process of its own (``python -m moto.server``)."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()


def start_local_s3_process(timeout_s: float = 30.0) -> LocalS3:
    """A server in its own process on 127.0.0.1 (a free port), stopped at exit: for benchmarks, so the
    server's Python does not share a GIL with the clients it serves."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the local S3 server did not start on 127.0.0.1:{port}") from None
            time.sleep(0.1)
    s3 = LocalS3(f"http://127.0.0.1:{port}", _ServerProcess(proc))
    atexit.register(s3.stop)
    return s3


def shared_local_s3() -> LocalS3:
    """One server per process, started on first use."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = start_local_s3()
        return _shared
