"""The direct link for clients on other nodes: TLS with a pinned throwaway certificate, then the
link's own mutual HMAC handshake inside it (es_actors/write/tls_link.py, direct_link.py).

The unit tests run a real server and real sockets on 127.0.0.1, without Ray. The last test runs a
2-node simulated Ray cluster in its own process (tests/multinode_remote_link.py)."""

from __future__ import annotations

import datetime
import json
import os
import pickle
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from es_actors.errors import LinkRefused
from es_actors.write.direct_link import _MAGIC, DirectServer, connect
from es_actors.write.tls_link import FramedConnection, ServerIdentity, make_certificate
from es_actors.testing.own_process import run_in_own_process

REPO = Path(__file__).resolve().parents[1]
SECRET = "Ada Lovelace, 12 Analytical Street, IBAN GB29NWBK60161331926819"


@pytest.fixture
def tls_server():
    server = DirectServer(lambda batch: ["echo", batch], "test-tls", tls=ServerIdentity(), handshake_timeout_s=1.0)
    yield server
    server.close()


def round_trip(address, key, payload, cert=None):
    with connect(address, key, timeout=3, tls_cert=cert) as conn:
        conn.send_bytes(pickle.dumps(payload))
        return pickle.loads(conn.recv_bytes())


def test_tls_round_trip_over_a_framed_connection(tls_server):
    cert = tls_server.certificate()
    assert cert is not None and cert.startswith(b"-----BEGIN CERTIFICATE-----")
    conn = connect(tls_server.address, tls_server.authkey, timeout=3, tls_cert=cert)
    try:
        assert isinstance(conn, FramedConnection)
        assert conn._sock.version() in ("TLSv1.3", "TLSv1.2")
        for payload in ([1, 2], {"big": "x" * 300_000}, []):  # a frame bigger than a TLS record too
            conn.send_bytes(pickle.dumps(payload))
            assert pickle.loads(conn.recv_bytes()) == ("ok", ["echo", payload])
    finally:
        conn.close()


def test_the_loopback_link_has_no_certificate_and_stays_in_clear():
    server = DirectServer(lambda batch: batch, "test-plain")
    try:
        assert server.certificate() is None
        assert round_trip(server.address, server.authkey, [7]) == ("ok", [7])
    finally:
        server.close()


def test_a_client_with_a_wrong_key_is_refused(tls_server):
    with pytest.raises(LinkRefused, match="handshake failed"):
        round_trip(tls_server.address, os.urandom(32), [1], cert=tls_server.certificate())
    # the right key still works afterwards
    assert round_trip(tls_server.address, tls_server.authkey, [1], cert=tls_server.certificate()) == ("ok", ["echo", [1]])


def test_a_client_that_pins_another_certificate_is_refused(tls_server):
    other, _key, _exp = make_certificate()
    with pytest.raises(LinkRefused, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        round_trip(tls_server.address, tls_server.authkey, [1], cert=other)


def test_a_plaintext_client_gets_nothing_readable_from_the_tls_port(tls_server):
    # the link client without TLS: no challenge ever comes in clear, so it is refused
    with pytest.raises(LinkRefused):
        round_trip(tls_server.address, tls_server.authkey, [1])
    # a raw socket that speaks first: what comes back (if anything) is a TLS alert, never the link's hello
    with socket.create_connection(tls_server.address, timeout=3) as raw:
        raw.sendall(os.urandom(64))
        got = b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                chunk = raw.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
    assert _MAGIC not in got
    assert len(got) < 16, got  # at most an alert record


class _Tap:
    """A TCP proxy that records every byte both ways (what a network observer sees)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = self._listener.getsockname()[:2]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                with self._lock:
                    self.seen += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


def test_bytes_on_the_wire_are_not_the_payload(tls_server):
    payload = [{"event": "AddressChanged", "data": {"customer": SECRET}}]
    plain = DirectServer(lambda batch: batch, "test-plain")
    taps = [_Tap(tls_server.address), _Tap(plain.address)]
    try:
        assert round_trip(taps[0].address, tls_server.authkey, payload, cert=tls_server.certificate())[0] == "ok"
        assert round_trip(taps[1].address, plain.authkey, payload)[0] == "ok"
        time.sleep(0.2)  # the proxies' last chunks
        tls_bytes, clear_bytes = bytes(taps[0].seen), bytes(taps[1].seen)
        assert SECRET.encode() in clear_bytes  # the tap does see a clear link's payload...
        assert len(tls_bytes) > 2 * len(SECRET)
        assert SECRET.encode() not in tls_bytes  # ...and not the TLS link's
        assert b"AddressChanged" not in tls_bytes and _MAGIC not in tls_bytes
    finally:
        for t in taps:
            t.close()
        plain.close()


def test_a_silent_peer_on_the_tls_port_is_cut_off_at_the_deadline(tls_server):
    with socket.create_connection(tls_server.address, timeout=5) as silent:
        t0 = time.monotonic()
        assert silent.recv(64) == b""  # no TLS ClientHello: closed after the 1 s handshake deadline
        assert 0.5 < time.monotonic() - t0 < 4
    assert round_trip(tls_server.address, tls_server.authkey, [3], cert=tls_server.certificate()) == ("ok", ["echo", [3]])


def test_pending_tls_handshakes_are_bounded():
    server = DirectServer(lambda batch: batch, "test-tls", tls=ServerIdentity(), max_pending=3, handshake_timeout_s=30)
    silent = [socket.create_connection(server.address, timeout=5) for _ in range(9)]
    try:
        t0 = time.monotonic()
        assert round_trip(server.address, server.authkey, [5], cert=server.certificate()) == ("ok", [5])
        assert time.monotonic() - t0 < 2.0
        closed = 0
        for s in silent:
            s.settimeout(0.1)
            try:
                closed += s.recv(64) == b""
            except (TimeoutError, ConnectionResetError):
                pass
        assert closed >= 9 - 3
    finally:
        for s in silent:
            s.close()
        server.close()


def test_the_certificate_is_renewed_before_it_expires():
    identity = ServerIdentity()
    first = identity.certificate()
    assert identity.certificate() == first
    identity.expires = datetime.datetime.now(datetime.timezone.utc)  # due for renewal now
    renewed = identity.certificate()
    assert renewed != first
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=renewed.decode())  # a well-formed certificate


@pytest.mark.ray_kill
def test_a_client_on_another_node_writes_over_the_tls_link(tmp_path):
    out = tmp_path / "out.json"
    proc = run_in_own_process([str(REPO / "tests" / "multinode_remote_link.py"), str(tmp_path), str(out)], REPO,
                              timeout_s=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["client_node"] != result["actor_nodes"][0] and len(set(result["actor_nodes"])) == 1
    assert result["links"] == ["tls"] * result["partitions"], result["links"]
    assert result["errors"] == []
    assert result["balances"] == result["expected"]
    assert result["ray_client_links"] == [None] * result["partitions"]  # remote_link=False: Ray calls
    assert result["ray_client_on_worker"]
