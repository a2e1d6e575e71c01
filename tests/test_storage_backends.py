"""A store URI selects its storage backend; other schemes are refused with an es_actors error (no Ray)."""

from __future__ import annotations

import re

import pytest

from es_actors.errors import EsActorsError
from es_actors.storage.backends import open_backend, parse_store_uri
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.backend import LocalBackend
from es_actors.storage.objects import ObjectBackend


def test_plain_paths_and_file_uris_select_the_local_disk_backend(tmp_path):
    assert isinstance(open_backend(tmp_path), LocalBackend)
    assert isinstance(open_backend(f"file://{tmp_path}"), LocalBackend)
    assert StoreLayout.from_uri(f"file://{tmp_path}") == StoreLayout(tmp_path.resolve())


def test_blobdir_uris_select_the_whole_object_backend_and_round_trip(tmp_path):
    backend = open_backend(f"blobdir://{tmp_path}")
    assert isinstance(backend, ObjectBackend) and not backend.capabilities.can_append
    layout = StoreLayout.from_uri(f"blobdir://{tmp_path}")
    assert (layout.scheme, layout.root) == ("blobdir", tmp_path.resolve())
    assert StoreLayout.from_uri(layout.uri) == layout


@pytest.mark.parametrize("uri,message", [
    ("gcs://bucket/store", "gcs stores are not supported yet"),
    ("gs://bucket/store", "known: file://, blobdir://"),
    ("blobdir://relative/path", "blobdir:///absolute/path"),
])
def test_other_uris_are_refused_naming_the_scheme(uri, message):
    with pytest.raises(EsActorsError, match=message):
        parse_store_uri(uri)


def test_local_only_readers_refuse_a_whole_object_store_clearly(tmp_path):
    from es_actors.storage.local.follower import LogFollower
    from es_actors.storage.local.reader import log_snapshot

    layout = StoreLayout.from_uri(f"blobdir://{tmp_path}")
    with pytest.raises(EsActorsError, match="not supported on blobdir stores"):
        log_snapshot(layout, 1)
    with pytest.raises(EsActorsError, match="not supported on blobdir stores"):
        LogFollower(layout, 0)


# -- one parser for store URIs: nothing is created for text it refuses ----------------------------


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("text", [
    "blobdir:{tmp}/wanted",  # one slash: not a relative path named "blobdir:"
    "blobdir:wanted", "file:wanted", "file:{tmp}/wanted", "blobdir://host{tmp}/wanted", "file://host{tmp}/wanted",
    "blobdir:////{tmp}/wanted", "blobdir:///{tmp}/wanted?mode=x", "file:///{tmp}/wanted#frag",
    "foo:wanted", "blobdir:///{tmp}/bad%ff",
])
def test_text_that_looks_like_a_uri_must_be_a_known_scheme_written_scheme_slash_slash_slash_path(
        tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    text = text.format(tmp=tmp_path)
    with pytest.raises(EsActorsError, match=r"file:///absolute/path|blobdir:///absolute/path") as info:
        StoreLayout.from_uri(text).create_or_check(None, 1)
    assert repr(text) in str(info.value)
    assert _tree(tmp_path) == [], "a refused store URI created something"


def test_a_path_object_spelling_a_uri_is_parsed_as_that_uri_not_as_a_relative_directory(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(EsActorsError, match="blobdir:///absolute/path"):
        StoreLayout.from_uri(Path(f"blobdir:///{tmp_path}/wanted"))  # Path() collapses it to blobdir:/...
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("value", [None, "", "   ", b"/tmp/store", 42, "/", "blobdir:///", "file:///",
                                   "blobdir:///tmp/..", "file:///tmp/%2E%2E"])
def test_no_text_and_the_root_directory_are_refused(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EsActorsError, match="is not a store URI"):
        StoreLayout.from_uri(value)
    assert _tree(tmp_path) == []


def test_percent_escapes_are_decoded_for_every_scheme_and_a_layout_uri_round_trips(tmp_path):
    from urllib.parse import quote

    odd = tmp_path / "a b%c?d#e"
    for scheme in ("file", "blobdir"):
        parsed = parse_store_uri(f"{scheme}://{quote(str(odd))}")
        assert parsed.path == odd
        layout = StoreLayout.from_uri(f"{scheme}://{quote(str(odd))}")
        assert StoreLayout.from_uri(layout.uri) == layout
    assert parse_store_uri("FILE:///tmp/x").scheme == "file" and parse_store_uri("BlobDir:///tmp/x").scheme == "blobdir"
    assert parse_store_uri("C:/store").scheme == ""  # a drive letter is not a scheme


def _local_store(root):
    from es_actors.storage.local.backend import LocalBackend
    from es_actors.testing.storage_conformance import EventLog, small_config

    StoreLayout(root).create_or_check(1, 1)
    log = LocalBackend(root).open_log(0, small_config())
    EventLog().append(log, ["a"])
    log.close()


def _blobdir_store(root):
    from es_actors.testing.storage_conformance import EventLog, small_config

    StoreLayout.from_uri(f"blobdir://{root}").create_or_check(1, 1)
    log = ObjectBackend.on_directory(root).open_log(0, small_config())
    EventLog().append(log, ["a"])
    log.close()


def _bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("with_log", [True, False])
def test_a_directory_holding_the_other_backends_store_says_which_uri_opens_it(tmp_path, with_log):
    local, blob = tmp_path / "local", tmp_path / "blob"
    if with_log:
        _local_store(local)
        _blobdir_store(blob)
    else:  # just created: only store.json
        StoreLayout(local).create_or_check(1, 1)
        StoreLayout.from_uri(f"blobdir://{blob}").create_or_check(1, 1)
    before = _bytes(tmp_path)
    with pytest.raises(EsActorsError, match=f"holds a local-disk store.*open it as {local}$"):
        StoreLayout.from_uri(f"blobdir://{local}").create_or_check(None, 1)
    for uri in (str(blob), f"file://{blob}"):
        with pytest.raises(EsActorsError, match=f"holds a blobdir .*open it as blobdir://{blob}$"):
            StoreLayout.from_uri(uri).create_or_check(None, 1)
    assert _bytes(tmp_path) == before


# -- s3://bucket/prefix --------------------------------------------------------------------------


def test_s3_uris_name_a_bucket_a_prefix_and_optionally_an_endpoint_and_round_trip():
    layout = StoreLayout.from_uri("s3://my-bucket/stores/bank?endpoint_url=http://127.0.0.1:9000")
    assert (layout.scheme, str(layout.root), layout.endpoint) == ("s3", "/my-bucket/stores/bank", "http://127.0.0.1:9000")
    assert StoreLayout.from_uri(layout.uri) == layout
    plain = StoreLayout.from_uri("s3://my-bucket/bank/")
    assert plain.endpoint is None and plain.uri == "s3://my-bucket/bank" and plain.remote
    odd = StoreLayout.from_uri("s3://my-bucket/a%20b/c")
    assert str(odd.root) == "/my-bucket/a b/c" and StoreLayout.from_uri(odd.uri) == odd


@pytest.mark.parametrize("uri,why", [
    ("s3://my-bucket", "a prefix of its own"),
    ("s3://my-bucket/", "a prefix of its own"),
    ("s3://my-bucket/a/../b", "'..'"),
    ("s3://my-bucket/a//b", "empty"),
    ("s3://Bad_Bucket/x", "not an S3 bucket name"),
    ("s3://ab/x", "not an S3 bucket name"),
    ("s3:///my-bucket/x", "s3://bucket/prefix"),
    ("s3://key:secret@my-bucket/x", "never from a store URI"),
    ("s3://my-bucket/x?endpoint_url=http://key:secret@127.0.0.1", "no user, password"),
    ("s3://my-bucket/x?region=eu", "only query parameter is endpoint_url"),
    ("s3://my-bucket/x?endpoint_url=http://u:p@127.0.0.1:9000", "no user, password"),
    ("s3://my-bucket/x?endpoint_url=ftp://127.0.0.1", "http(s)://host"),
    ("s3://my-bucket/x#frag", "no #fragment"),
    ("s3://my-bucket/x?aws_secret_access_key=secret", "only query parameter is endpoint_url"),
    ("s3://my-bucket/x?endpoint_url=http%3A%2F%2Fkey%3Asecret%40127.0.0.1%3A9000", "no user, password"),
    ("s3://my-bucket/x?endpoint_url=http://127.0.0.1:9000?secret", "no user, password"),
    ("s3://my-bucket/a\nb", "control character"),
    ("s3://my-bucket/a\tb", "control character"),
    ("s3://192.168.1.1/x", "not an IP address"),
    ("s3://my-bucket/" + "p" * 901, "longer than 900 bytes"),
    ("s3://my-bucket/x?endpoint_url=http://127.0.0.1:99999", "http(s)://host[:port]"),
    ("gcs://key:secret@my-bucket/x", "gcs stores are not supported yet"),
])
def test_bad_s3_uris_are_refused_naming_why_before_any_request(uri, why):
    with pytest.raises(EsActorsError, match=re.escape(why)) as info:
        StoreLayout.from_uri(uri)
    assert "secret" not in str(info.value) and ":p@" not in str(info.value), "a credential was repeated"
    query = uri.split("?", 1)[1] if "?" in uri else None
    assert query is None or query not in str(info.value), "the query was repeated"
