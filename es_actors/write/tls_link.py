"""TLS for the direct link to a partition actor from a client on another node.

Events carry personal data, so the cross-node link is encrypted. The partition actor makes a
throwaway self-signed certificate (EC P-256, valid a few days) in memory; its PEM travels to the
client only inside a Ray call (``PartitionActor.endpoint``, authenticated by Ray's cluster token),
like the link key, and the client trusts exactly that certificate (pinned: no CA, no host name).
Inside TLS the link's own mutual HMAC handshake still runs (es_actors/write/direct_link.py), so a
peer needs both the pinned certificate's private key and the link key.

``multiprocessing.connection.Connection`` cannot wrap an ``ssl.SSLSocket``; :class:`FramedConnection`
has the same ``send_bytes``/``recv_bytes``/``close`` interface (4-byte big-endian length, then the
bytes) over any socket.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import struct
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALID_FOR = datetime.timedelta(days=7)
RENEW_BEFORE = datetime.timedelta(days=1)  # a new certificate for new connections when less is left
MAX_FRAME = 1 << 30
_HEADER = struct.Struct("!I")


def make_certificate(common_name: str = "es-actors partition actor") -> tuple[bytes, bytes, datetime.datetime]:
    """(certificate PEM, private key PEM, expiry) of a fresh self-signed EC P-256 certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    expires = now + CERT_VALID_FOR
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of nodes differ a little
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, expires


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """TLS 1.2+ server context with the certificate; the key never touches the disk but for an
    instant in a private temporary file (``load_cert_chain`` reads files only)."""
    import os
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    fd, path = tempfile.mkstemp(prefix="es-actors-link-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem + key_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    return ctx


def client_context(cert_pem: bytes) -> ssl.SSLContext:
    """TLS 1.2+ client context that trusts exactly ``cert_pem`` (pinned; no host name to check:
    the certificate itself came through Ray)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert_pem.decode("ascii"))
    return ctx


class FramedConnection:
    """Length-prefixed frames over a socket (an ``SSLSocket`` here), as ``Connection`` does."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        self._sock = sock

    def send_bytes(self, data: bytes) -> None:
        n = len(data)
        if n > MAX_FRAME:
            raise ValueError(f"a frame of {n} bytes is over the link's limit of {MAX_FRAME}")
        if n < 65536:
            self._sock.sendall(_HEADER.pack(n) + data)  # one TLS record for a small batch
        else:
            self._sock.sendall(_HEADER.pack(n))
            self._sock.sendall(data)

    def recv_bytes(self) -> bytes:
        (n,) = _HEADER.unpack(self._recv_exact(_HEADER.size))
        if n > MAX_FRAME:
            raise OSError(f"the peer announced a frame of {n} bytes, over the link's limit")
        return self._recv_exact(n)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:], n - got)
            if not k:
                raise EOFError("the link was closed")
            got += k
        return bytes(buf)

    def shutdown(self) -> None:
        """Both ways, descriptor kept (see direct_link.shutdown_link)."""
        self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "FramedConnection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ServerIdentity:
    """The listener's certificate and TLS context; a new pair for new connections when the
    current certificate has less than ``RENEW_BEFORE`` left (open connections keep theirs)."""

    def __init__(self) -> None:
        self._renew()

    def _renew(self) -> None:
        cert, key, self.expires = make_certificate()
        self.context = server_context(cert, key)
        self.cert_pem = cert

    def certificate(self) -> bytes:
        """The PEM a client must pin, renewed first if it expires soon."""
        if datetime.datetime.now(datetime.timezone.utc) > self.expires - RENEW_BEFORE:
            self._renew()
        return self.cert_pem
