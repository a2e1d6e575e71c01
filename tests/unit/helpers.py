"""Shared pieces of the unit tests: a Ray-free partition on a real temporary directory."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Sequence

from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.examples.bank import BankAccount
from es_actors.storage.layout import StoreLayout
from es_actors.write.partition import Partition
from es_actors.write.protocol import CommandEnvelope


def open_partition(root: Path, interceptors: Sequence[Any] = (), **settings: Any) -> Partition:
    StoreLayout(root).create_or_check(1, 1)
    config = StoreConfig(partitions=1, lock_timeout_s=0, **settings)
    return Partition(StoreLayout(root), 0, DomainRegistry([BankAccount]), config, interceptors)


def command(aid: str, name: str = "Deposit", payload: dict[str, Any] | None = None, *,
            command_id: str | None = None, **fields: Any) -> CommandEnvelope:
    body = {"amount": 1} if payload is None and name == "Deposit" else payload or {"owner": aid}
    return CommandEnvelope("BankAccount", aid, command_id or uuid.uuid4().hex, name, json.dumps(body), **fields)
