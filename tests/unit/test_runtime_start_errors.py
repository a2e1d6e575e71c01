"""Starting a store's actors tells a constructor failure from a name still being released by
Ray's own flag on the error (not its text), and reports it as an es_actors error naming what
did not start. Ray's exception classes are built here; no Ray runs."""

from __future__ import annotations

import ray.exceptions as rex

from es_actors.errors import ActorStartFailed, EsActorsError
from es_actors.runtime.cluster import actor_start_failed, died_in_constructor


def _constructor_failed() -> rex.ActorDiedError:
    cause = rex.RayTaskError("ProjectorActor.__init__", "Traceback ...\nValueError: no such table", ValueError("x"))
    return rex.ActorDiedError(cause)


def test_a_constructor_failure_is_told_by_ray_flag_not_text():
    assert died_in_constructor(_constructor_failed())
    assert not died_in_constructor(rex.ActorDiedError())  # e.g. killed by close() a moment ago: retried
    assert not died_in_constructor(ValueError("The actor died because of an error raised in its creation task"))


def test_the_start_error_names_what_did_not_start_and_why():
    err = actor_start_failed("the projector", _constructor_failed())
    assert isinstance(err, ActorStartFailed) and isinstance(err, EsActorsError)
    assert str(err).startswith("the projector did not start: ") and "no such table" in str(err)
