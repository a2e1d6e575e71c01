"""What a caller hands the store to send a command: the command id, the audit that travels
with it, one item of a bulk call, and naming an aggregate by class or type name.

Kept apart from the facade so they can be built and checked without a store (and without Ray).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from es_actors.domain import Aggregate, Command
from es_actors.errors import InvalidPayload

T = TypeVar("T")


def new_command_id() -> str:
    """128 random bits as hex, like uuid4().hex at a fraction of the cost."""
    return os.urandom(16).hex()


@dataclass(frozen=True)
class Audit:
    """Who asked, as part of what, and why: stored on every event the command appends."""

    principal: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_meta(self) -> dict[str, Any] | None:
        """The audit as it travels to the actor; None when there is nothing to say (the common case).

        Values go as given (no truthiness test): the envelope check refuses a wrong type
        instead of it being dropped (a principal of 0 is an error, not "no principal")."""
        md = self.metadata
        empty_md = md is None or (type(md) is dict and not md)
        if (self.principal is None and self.correlation_id is None and self.causation_id is None
                and self.reason is None and empty_md):
            return None
        return {
            "principal": self.principal,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "reason": self.reason,
            "metadata": None if empty_md else md,
        }


@dataclass(frozen=True)
class Submission:
    """One command of a bulk call."""

    aggregate: Any  # aggregate class or its type name
    aggregate_id: str
    command: Command
    expected_version: int | None = None
    command_id: str | None = None
    audit: Audit = Audit()


def aggregate_type_name(aggregate: Any) -> str:
    """The type name of an aggregate given as its class or its name."""
    if isinstance(aggregate, str):
        return aggregate
    if isinstance(aggregate, type) and issubclass(aggregate, Aggregate):
        return aggregate.aggregate_type
    raise InvalidPayload(f"aggregate must be an Aggregate class or its type name, not {type(aggregate).__name__}")


def failed(sink: Callable[[], T], exc: BaseException) -> T:
    """A result slot or Future (made by ``sink``) that already holds ``exc``."""
    f = sink()
    f.set_exception(exc)  # type: ignore[attr-defined]
    return f
