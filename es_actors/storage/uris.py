"""The one parser of store URIs: which backend's scheme, and which local directory.

Rules (ADR-014), so a typo never becomes a store created somewhere unexpected:

- a plain path (absolute, relative to the working directory, or ``~/...``) names a local-disk store;
- ``s3://bucket/prefix`` names a store on S3-compatible object storage (a bucket name as S3 allows it,
  a non-empty prefix without ``.`` or ``..`` parts); its only query parameter is ``endpoint_url``
  (an ``http(s)://host[:port]`` of an S3-compatible server), never a credential;
- any text that starts like a URI scheme (a letter, then letters, digits, ``+``, ``.`` or ``-``,
  then ``:``; one letter is a Windows drive, not a scheme) is a URI: its scheme must be a known
  one (case-insensitive) written as ``scheme:///absolute/path`` (no host, no ``?query`` or
  ``#fragment``); percent-escapes in the path are decoded (``%20`` is a space), for every scheme;
- empty text, ``None``, bytes and other objects, and the root directory ``/`` are refused.

Every refusal is an :class:`EsActorsError` naming the text and the accepted forms; nothing is
created or read here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from es_actors.errors import EsActorsError

LOCAL_SCHEMES = ("", "file")  # "": a plain path
OBJECT_DIR_SCHEME = "blobdir"
S3_SCHEME = "s3"
KNOWN_SCHEMES = ("file", OBJECT_DIR_SCHEME, S3_SCHEME)
ACCEPTED_FORMS = "a plain path, file:///absolute/path, blobdir:///absolute/path or s3://bucket/prefix"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_ENDPOINT = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?/?")
_MAX_PREFIX_BYTES = 900


@dataclass(frozen=True, slots=True)
class StoreUri:
    """A parsed store URI: its scheme ("" for a plain path) and the local directory it names (for
    ``s3``: ``/bucket/prefix``, a name that is never a local directory, and the endpoint if given)."""

    scheme: str
    path: Path
    endpoint: str | None = None


def _refuse(text: object, why: str) -> EsActorsError:
    return EsActorsError(f"{text!r} is not a store URI: {why} (accepted: {ACCEPTED_FORMS})")


def parse_store_uri(uri: str | os.PathLike[str]) -> StoreUri:
    """Split a store URI into (scheme, resolved directory); EsActorsError for anything else."""
    if not isinstance(uri, (str, os.PathLike)):
        raise _refuse(uri, f"a {type(uri).__name__} names no store")
    text = os.fspath(uri)
    if not isinstance(text, str):
        raise _refuse(uri, "a path given as bytes names no store")
    if not text.strip():
        raise _refuse(text, "it is empty")
    match = _SCHEME.match(text)
    if match is None or len(match.group(1)) == 1:  # "C:\\..." is a drive letter, not a scheme
        return StoreUri("", _directory(text, Path(text).expanduser()))
    scheme = match.group(1).lower()
    if scheme not in KNOWN_SCHEMES:
        shown = re.sub(r"//[^/?#]*@", "//***@", text)  # a user part may hold a credential: never repeat it
        raise EsActorsError(
            f"{shown!r}: {scheme} stores are not supported yet: no storage backend serves the {scheme!r} scheme "
            f"(known: file://, blobdir://, s3:// or a plain path: {ACCEPTED_FORMS}; a relative local path "
            f"containing a colon is written ./{shown}); see adrs/ADR-014-storage-interface.md"
        )
    rest = text[match.end():]
    if scheme == S3_SCHEME:
        return _parse_s3(text, rest)
    if not rest.startswith("///") or rest.startswith("////"):
        raise _refuse(text, f"a {scheme} URI names a local directory by its absolute path, with no host: "
                      f"{scheme}:///absolute/path")
    if "?" in rest or "#" in rest:
        raise _refuse(text, "a store URI has no ?query or #fragment (write a '?' or '#' in a directory name as "
                      "%3F or %23)")
    try:
        path = unquote(rest[2:], errors="strict")
    except UnicodeDecodeError:
        raise _refuse(text, "its percent-escapes are not UTF-8") from None
    return StoreUri(scheme, _directory(text, Path(path)))


def _parse_s3(text: str, rest: str) -> StoreUri:
    """``//bucket/prefix[?endpoint_url=...]``. Errors never repeat the query, a user part or anything
    after ``?``/``#`` (a credential may hide there): they name the URI as ``s3://<bucket>/<prefix>``."""
    from urllib.parse import parse_qs, urlsplit

    head = re.split(r"[?#]", text, maxsplit=1)[0]
    shown = re.sub(r"//[^/]*@", "//***@", head) + ("?..." if len(head) < len(text) else "")
    if not rest.startswith("//") or rest.startswith("///"):
        raise _refuse(shown, "an s3 URI names a bucket and a prefix: s3://bucket/prefix")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _refuse(shown, "it holds a control character (a tab or line break)")
    parts = urlsplit("s3:" + rest)
    if parts.fragment or "@" in parts.netloc:
        raise _refuse(shown, "an s3 URI has no #fragment and no user or password (credentials come from the AWS "
                      "environment, profile or instance role, never from a store URI)")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or re.fullmatch(r"[0-9.]+", bucket) or bucket.startswith("xn--"):
        raise _refuse(shown, f"{bucket!r} is not an S3 bucket name (3-63 characters: a-z, 0-9, '.', '-'; not an "
                      "IP address)")
    try:
        prefix = unquote(parts.path, errors="strict").strip("/")
    except UnicodeDecodeError:
        raise _refuse(shown, "its percent-escapes are not UTF-8") from None
    segments = prefix.split("/")
    if not prefix or any(seg in ("", ".", "..") for seg in segments) or "\x00" in prefix:
        raise _refuse(shown, "an s3 store needs a prefix of its own, without empty, '.' or '..' parts: "
                      "s3://bucket/prefix")
    if len(prefix.encode()) > _MAX_PREFIX_BYTES:
        raise _refuse(shown, f"the prefix is longer than {_MAX_PREFIX_BYTES} bytes (S3 keys hold 1024, and the "
                      "store's own names need the rest)")
    endpoint = None
    if parts.query:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        if set(query) != {"endpoint_url"} or len(query["endpoint_url"]) != 1:
            raise _refuse(shown, "an s3 URI's only query parameter is endpoint_url (e.g. ?endpoint_url=http://127.0.0.1:9000)")
        endpoint = query["endpoint_url"][0].rstrip("/")
        port = re.search(r":([0-9]+)/?$", endpoint)
        if not _ENDPOINT.fullmatch(endpoint) or (port is not None and not 0 < int(port.group(1)) < 65536):
            raise _refuse(shown, "endpoint_url is http(s)://host[:port] with no user, password, path or query")
    return StoreUri(S3_SCHEME, Path("/" + bucket) / prefix, endpoint)


def _directory(text: str, path: Path) -> Path:
    if "\x00" in str(path):
        raise _refuse(text, "a path holds no NUL character")
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        raise _refuse(text, f"it names the root directory {resolved}; a store needs a directory of its own")
    return resolved


def format_store_uri(scheme: str, root: Path, endpoint: str | None = None) -> str:
    """What :func:`parse_store_uri` reads back as (scheme, root): a plain path for a local store,
    ``s3://bucket/prefix[?endpoint_url=...]``, else ``scheme:///path`` with ``%``, ``?`` and ``#``
    (and other unsafe characters) escaped."""
    if scheme == S3_SCHEME:
        uri = f"s3:/{quote(str(root), safe='/')}"
        return uri + (f"?endpoint_url={quote(endpoint, safe=':/')}" if endpoint else "")
    return f"{scheme}://{quote(str(root), safe='/')}" if scheme else str(root)
