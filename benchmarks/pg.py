"""A throwaway PostgreSQL cluster on 127.0.0.1 for the peers, started and removed by the benchmark.

    with PgCluster() as pg:
        with pg.connect() as conn:  # psycopg 3, autocommit off
            ...

Uses Debian's server binaries (``/usr/lib/postgresql/<ver>/bin``; installs the ``postgresql``
package with apt-get if there are none and we are root). The server refuses to run as root,
so as root ``initdb``/``pg_ctl`` run as the ``postgres`` user (``runuser -u postgres --``).
The data directory lives in a fresh temp dir owned by that user; the server listens on
127.0.0.1 only, on a free port, with trust auth, and its Unix socket in that temp dir. On
exit (also on error, Ctrl-C or SIGTERM) the server is stopped and the directory deleted.

Also offers :func:`create_events_table`, the events table the peers share.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from benchmarks.common import log

def events_ddl(table: str = "events") -> str:
    """PostgreSQL's event store table (a stream's events unique by version), as the peers use it."""
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    stream_id   text        NOT NULL,
    version     bigint      NOT NULL,
    event_type  text        NOT NULL,
    payload     jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
)
"""


EVENTS_DDL = events_ddl()

_live: set["PgCluster"] = set()
_live_lock = threading.Lock()
_handlers_installed = False


def _stop_all() -> None:
    with _live_lock:
        clusters = list(_live)
    for c in clusters:
        c.stop()


def _install_handlers() -> None:
    """atexit + SIGTERM/SIGHUP -> SystemExit, so ``finally`` blocks and atexit run."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: context managers and atexit stop the clusters


def find_bin_dir(install: bool = True) -> Path:
    """Directory holding initdb/pg_ctl/postgres (newest Debian version, else on PATH)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: _version_key(d))
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        log("PostgreSQL server binaries not found: apt-get install postgresql")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )
        return find_bin_dir(install=False)
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's 'postgresql' package")


def _version_key(d: str) -> tuple[int, ...]:
    part = Path(d).parent.name
    return tuple(int(x) for x in part.split(".") if x.isdigit()) or (0,)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One throwaway cluster. ``settings`` are extra ``-c name=value`` server settings."""

    def __init__(self, settings: dict[str, Any] | None = None, user: str = "postgres") -> None:
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "synchronous_commit": "on",
            "fsync": "on",
            "max_connections": "200",
            "shared_buffers": "256MB",
            **(settings or {}),
        }
        self.db_user = user
        self.bin_dir: Path | None = None
        self.base: Path | None = None
        self.port: int | None = None
        self._started = False
        self._as_root = os.geteuid() == 0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "PgCluster":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    def _cmd(self, *args: str) -> list[str]:
        assert self.bin_dir is not None
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_root else cmd

    def _run(self, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> None:
        _install_handlers()
        self.bin_dir = find_bin_dir()
        self.base = Path(tempfile.mkdtemp(prefix="es_bench_pg_"))
        with _live_lock:
            _live.add(self)
        try:
            if self._as_root:
                pw = pwd.getpwnam("postgres")
                os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chmod(self.base, 0o700)
            self._run("initdb", "-D", str(self.data_dir), "-U", self.db_user, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
            self.port = free_port()
            opts = " ".join(f"-c {k}={v}" for k, v in {
                **self.settings, "port": self.port, "unix_socket_directories": str(self.base),
            }.items())
            self._run("pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", "60",
                      "-l", str(self.base / "server.log"), "-o", opts)
            self._started = True
            log(f"postgres {self.server_version()} up on 127.0.0.1:{self.port} (data in {self.base})")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Safe to call twice."""
        with _live_lock:
            if self not in _live:
                return
            _live.discard(self)
        try:
            if self._started and self.base is not None and (self.data_dir / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60")
                except Exception as exc:  # last resort: immediate
                    log(f"pg_ctl stop failed ({exc}); trying immediate")
                    try:
                        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30")
                    except Exception:
                        pass
        finally:
            self._started = False
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.db_user} dbname=postgres"

    def connect(self, autocommit: bool = False) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=autocommit)

    def server_version(self) -> str:
        with self.connect(autocommit=True) as conn:
            return conn.execute("SHOW server_version").fetchone()[0].split()[0]

    def execute(self, sql: str, params: Any = None) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(sql, params)


def create_events_table(pg: PgCluster, drop: bool = True) -> None:
    """The peers' events table: one row per event, version unique per stream."""
    with pg.connect(autocommit=True) as conn:
        if drop:
            conn.execute("DROP TABLE IF EXISTS events")
        conn.execute(EVENTS_DDL)
