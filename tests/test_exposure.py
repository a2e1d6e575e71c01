"""What a careless client or a local attacker must not achieve: block the direct link, reach the
embedded Ray from another host, or get Ray's wrapper instead of the es_actors error."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray

from es_actors import EsActorsError, Store, Submission, UnknownAggregateType, UnreadableEvent
from es_actors.write.direct_link import DirectServer, connect
from es_actors.errors import LinkRefused
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from tests.domains import SlowCounter, Tick

ROOT = Path(__file__).resolve().parents[1]


# -- the direct link: handshakes off the accept path, bounded, with a deadline ---------------------


def echo_server(**options) -> DirectServer:
    return DirectServer(lambda batch: ["echo", batch], "test", **options)


def round_trip(server: DirectServer, payload: object, key: bytes | None = None) -> object:
    with connect(server.address, key or server.authkey, timeout=2) as conn:
        conn.send_bytes(pickle.dumps(payload))
        return pickle.loads(conn.recv_bytes())


def silent_sockets(address: tuple[str, int], n: int) -> list[socket.socket]:
    """Connections that never answer the challenge (a stuck or hostile local process)."""
    return [socket.create_connection(address, timeout=5) for _ in range(n)]


def test_silent_connections_beyond_the_bound_do_not_delay_a_real_client():
    server = echo_server(max_pending=4, handshake_timeout_s=30)
    silent = silent_sockets(server.address, 12)  # three times the bound, none ever answers
    try:
        t0 = time.monotonic()
        assert round_trip(server, [1, 2]) == ("ok", ["echo", [1, 2]])
        assert time.monotonic() - t0 < 1.0
        closed = 0  # beyond the bound the longest-waiting ones were closed at once, not after 30 s
        for s in silent:
            s.settimeout(0.05)
            try:
                s.recv(64)  # the challenge
                closed += s.recv(64) == b""
            except (TimeoutError, ConnectionResetError):
                pass
        assert closed >= 12 - 4
    finally:
        for s in silent:
            s.close()
        server.close()


def test_a_connection_that_never_answers_is_dropped_at_the_deadline():
    server = echo_server(handshake_timeout_s=0.3)
    [silent] = silent_sockets(server.address, 1)
    try:
        silent.settimeout(5)
        t0 = time.monotonic()
        challenge = silent.recv(64)
        assert challenge.startswith(b"es-actors-link/1")
        assert silent.recv(64) == b""  # hung up on
        assert 0.2 < time.monotonic() - t0 < 2.0
    finally:
        silent.close()
        server.close()


def test_a_wrong_key_is_refused_and_refusals_do_not_flood_the_log(caplog):
    server = echo_server()
    try:
        with caplog.at_level(logging.WARNING, logger="es_actors.write.direct_link"):
            for _ in range(30):
                with pytest.raises(LinkRefused, match="handshake failed"):
                    round_trip(server, "x", key=b"k" * 32)
            assert round_trip(server, "still serving") == ("ok", ["echo", "still serving"])
            time.sleep(0.1)  # the server threads log after the client already saw the refusal
        # (a server of an earlier test may still log its own late refusal: a timeout, not a key)
        refusals = [r for r in caplog.records
                    if r.name == "es_actors.write.direct_link" and "TimeoutError" not in r.getMessage()]
        assert 1 <= len(refusals) <= 2, [r.getMessage() for r in refusals]
        assert "wrong key" in refusals[0].getMessage()
    finally:
        server.close()


def test_a_client_refuses_a_server_that_does_not_hold_the_key():
    server = echo_server()
    impostor = socket.create_server(("127.0.0.1", 0))  # took over the port of a dead actor, say
    try:
        with pytest.raises(LinkRefused, match="not an es_actors partition actor|handshake failed"):
            connect(impostor.getsockname()[:2], server.authkey, timeout=0.5)
    finally:
        impostor.close()
        server.close()


def test_a_silent_local_socket_does_not_block_a_second_client_of_the_store(store_factory, tmp_path):
    s = store_factory("blocked", partitions=1)
    s.aggregate(BankAccount, "a").submit(OpenAccount(owner="a"))
    _node, address, key, _cert = ray.get(s._actors[0].endpoint.remote())
    silent = silent_sockets(tuple(address), 20)  # beyond the server's bound of pending handshakes
    try:
        other = Store.open(tmp_path / "blocked", [BankAccount])  # joins the same actors: connects anew
        t0 = time.monotonic()
        assert other.aggregate(BankAccount, "b").submit(OpenAccount(owner="b"), timeout=8).version == 1
        assert time.monotonic() - t0 < 1.5
        with pytest.raises(LinkRefused):
            connect(tuple(address), os.urandom(32), timeout=2)
        assert other.aggregate(BankAccount, "b").submit(Deposit(amount=3), timeout=8).version == 2
    finally:
        for sock in silent:
            sock.close()


# -- the embedded Ray listens on loopback only ------------------------------------------------------


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def listening_sockets(pid: int) -> list[dict[str, object]]:
    """Every TCP socket listening and every unconnected UDP socket of ``pid`` and its descendants."""
    root = psutil.Process(pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns, name = proc.net_connections(kind="inet"), f"{proc.name()} {' '.join(proc.cmdline())[:100]}"
        except psutil.NoSuchProcess:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                out.append({"process": name, "ip": c.laddr.ip, "port": c.laddr.port})
    return out


SOCKETS_OF_A_STORE = """
import json, os, sys
from es_actors import Store
from es_actors.examples.bank import BankAccount, OpenAccount
from tests.test_exposure import listening_sockets

store = Store.open(sys.argv[1], [BankAccount], partitions=2)
acct = store.aggregate(BankAccount, "a")
acct.submit(OpenAccount(owner="x"))
report = {"version": acct.state().version, "auth": os.environ.get("RAY_AUTH_MODE"),
          "sockets": listening_sockets(os.getpid())}
store.close()
print(json.dumps(report))
"""


def test_a_store_started_ray_listens_on_loopback_only_with_token_auth_on(tmp_path):
    """Store.open with no cluster to join (what `make demo` does) starts a Ray whose every process,
    GCS, raylet, workers, dashboard, agents and metrics included, listens on 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    out = subprocess.run([sys.executable, "-c", SOCKETS_OF_A_STORE, str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=240, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["version"] == 1 and report["auth"] == "token"
    names = " ".join(s["process"] for s in report["sockets"])
    assert "gcs_server" in names and "raylet" in names and "DashboardAgent" in names  # the list is complete
    exposed = [s for s in report["sockets"] if not is_loopback(s["ip"])]
    assert not exposed, exposed


def test_the_test_session_ray_listens_on_loopback_only(ray_session):
    sockets = listening_sockets(os.getpid())
    assert any("gcs_server" in s["process"] for s in sockets)
    exposed = [s for s in sockets if not is_loopback(s["ip"])]
    assert not exposed, exposed


# -- errors from actor calls arrive as the es_actors error itself ----------------------------------


def assert_plain(exc: BaseException, cls: type[BaseException]) -> None:
    assert type(exc) is cls, type(exc).__mro__
    assert "\x1b[" not in str(exc) and "Traceback" not in str(exc), str(exc)


def test_state_of_an_aggregate_type_the_actor_does_not_know_is_the_es_actors_error(store_factory, tmp_path):
    store_factory("joined", partitions=1)  # its actors know BankAccount only
    other = Store.open(tmp_path / "joined", [BankAccount, SlowCounter])  # a client that knows more
    with pytest.raises(UnknownAggregateType) as info:
        other.aggregate(SlowCounter, "c").state()
    assert_plain(info.value, UnknownAggregateType)
    assert "unknown aggregate type 'SlowCounter'" in str(info.value)
    for result in other.submit_many([Submission(SlowCounter, "c", Tick())]):
        assert_plain(result, UnknownAggregateType)


def test_state_of_an_aggregate_whose_events_cannot_be_read_is_the_es_actors_error(store_factory, tmp_path):
    from tests.test_schema_evolution import rewrite_row

    s = store_factory("unreadable", partitions=1)
    s.submit_many([Submission(BankAccount, "acc", OpenAccount(owner="o")), Submission(BankAccount, "acc", Deposit(amount=5))])
    s.close()  # seals the tail into a segment
    rewrite_row(tmp_path / "unreadable", "acc", 2, event_type="MysteryEvent")
    reopened = store_factory("unreadable")
    acct = reopened.aggregate(BankAccount, "acc")
    for call in (acct.state, reopened.hydrate):
        with pytest.raises(UnreadableEvent) as info:
            call()
        assert_plain(info.value, UnreadableEvent)
        assert "MysteryEvent" in str(info.value)


@ray.remote(num_cpus=0)
class Buggy:
    def fail(self) -> None:
        raise ValueError("a bug in an actor")


def test_a_bug_inside_an_actor_call_is_an_es_actors_error_naming_the_call(ray_session):
    from es_actors.runtime.cluster import actor_get

    actor = Buggy.remote()
    try:
        with pytest.raises(EsActorsError) as info:
            actor_get(actor.fail.remote())
        assert_plain(info.value, EsActorsError)
        assert "Buggy.fail failed in the actor: ValueError: a bug in an actor" in str(info.value)
        assert any("a bug in an actor" in n and "\x1b[" not in n for n in info.value.__notes__)  # remote traceback
    finally:
        ray.kill(actor)


# -- the command line ---------------------------------------------------------------------------------


def test_python_m_cli_query_runs_the_query_command(store_factory, tmp_path):
    s = store_factory("cliq", partitions=1)
    s.submit_many([Submission(BankAccount, "q", OpenAccount(owner="q")), Submission(BankAccount, "q", Deposit(amount=7))])
    s.seal()
    cmd = [sys.executable, "-m", "es_actors.cli", "query", "SELECT count(*) AS n FROM events", "--store",
           str(tmp_path / "cliq"), "--json"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [{"n": 2}]
