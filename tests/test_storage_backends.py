"""A store URI selects its storage backend; other schemes are refused with an es_actors error (no Ray)."""

from __future__ import annotations

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
    ("s3://bucket/store", "s3 stores are not supported yet"),
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
