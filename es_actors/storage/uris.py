"""The one parser of store URIs: which backend's scheme, and which local directory.

Rules (ADR-014), so a typo never becomes a store created somewhere unexpected:

- a plain path (absolute, relative to the working directory, or ``~/...``) names a local-disk store;
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
KNOWN_SCHEMES = ("file", OBJECT_DIR_SCHEME)
ACCEPTED_FORMS = "a plain path, file:///absolute/path or blobdir:///absolute/path"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")


@dataclass(frozen=True, slots=True)
class StoreUri:
    """A parsed store URI: its scheme ("" for a plain path) and the local directory it names."""

    scheme: str
    path: Path


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
        raise EsActorsError(
            f"{text!r}: {scheme} stores are not supported yet: no storage backend serves the {scheme!r} scheme "
            f"(known: file://, blobdir:// or a plain path: {ACCEPTED_FORMS}; a relative local path containing "
            f"a colon is written ./{text}); see adrs/ADR-014-storage-interface.md"
        )
    rest = text[match.end():]
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


def _directory(text: str, path: Path) -> Path:
    if "\x00" in str(path):
        raise _refuse(text, "a path holds no NUL character")
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        raise _refuse(text, f"it names the root directory {resolved}; a store needs a directory of its own")
    return resolved


def format_store_uri(scheme: str, root: Path) -> str:
    """What :func:`parse_store_uri` reads back as (scheme, root): a plain path for a local store,
    else ``scheme:///path`` with ``%``, ``?`` and ``#`` (and other unsafe characters) escaped."""
    return f"{scheme}://{quote(str(root), safe='/')}" if scheme else str(root)
