"""A test-only aggregate whose decide produces events that cannot be stored and read back
(importable by Ray workers: a plain module on the path)."""

from __future__ import annotations

import datetime
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from es_actors import Aggregate, Command, Event


class Record(Command):
    kind: str


class Measured(Event):
    value: float  # pydantic accepts inf here, and writes it as null


class MaybeMeasured(Event):
    value: float | None = None  # NaN is written as null: reads back as None, not what was decided


class Labelled(Event):
    label: str = Field(max_length=3)


class Constant(Event):
    model_config = ConfigDict(ser_json_inf_nan="constants")  # writes Infinity: not strict JSON
    value: float


class Total(BaseModel, frozen=True):
    n: int = 0


class Meter(Aggregate[Total]):
    commands = (Record,)
    events = (Measured, MaybeMeasured, Labelled, Constant)

    @classmethod
    def initial_state(cls) -> Total:
        return Total()

    @classmethod
    def decide(cls, state: Total, command: Record) -> Sequence[Event]:
        match command.kind:
            case "ok":
                return [Measured(value=1.5)]
            case "inf":
                return [Measured(value=float("inf"))]
            case "ok-then-inf":  # the first event is fine: nothing of the command may be written
                return [Measured(value=2.0), Measured(value=float("-inf"))]
            case "nan-optional":
                return [MaybeMeasured(value=float("nan"))]
            case "too-long":
                return [Labelled.model_construct(label="toolong")]
            case "surrogate":
                return [Labelled.model_construct(label="\ud800")]
            case "constant":
                return [Constant(value=float("inf"))]
            case "recursion":
                raise RecursionError("maximum recursion depth exceeded (simulated)")
            case "unicode":
                "\udc80".encode()
        raise ValueError(f"unknown kind {command.kind}")

    @classmethod
    def evolve(cls, state: Total, event: Event) -> Total:
        return Total(n=state.n + 1)


class OddlyNamed(Event):
    event_type = "Oddly\ud800Named"  # a stored name the log cannot encode (a lone surrogate)


class Odd(Aggregate[Total]):
    """Decides an event whose stored name passes every check but cannot be written."""

    commands = (Record,)
    events = (Measured, OddlyNamed)

    @classmethod
    def initial_state(cls) -> Total:
        return Total()

    @classmethod
    def decide(cls, state: Total, command: Record) -> Sequence[Event]:
        return [OddlyNamed()] if command.kind == "odd" else [Measured(value=1.0)]

    @classmethod
    def evolve(cls, state: Total, event: Event) -> Total:
        return Total(n=state.n + 1)


class Act(Command):
    how: str = "ok"  # "exit": decide raises SystemExit; "mute": an exception whose str() raises; "tz": a zoned time


class Acted(Event):
    at: datetime.datetime | None = None


class Mute(Exception):
    def __str__(self) -> str:
        raise ValueError("no text for you")


class Acts(BaseModel, frozen=True):
    count: int = 0
    labels: tuple[str, ...] = ()


class Actor(Aggregate[Acts]):
    """Decides badly on purpose: SystemExit, unprintable errors, time zones that read back as offsets."""

    commands = (Act,)
    events = (Acted,)

    @classmethod
    def initial_state(cls) -> Acts:
        return Acts()

    @classmethod
    def decide(cls, state: Acts, command: Act) -> Sequence[Event]:
        if command.how == "exit":
            raise SystemExit(3)
        if command.how == "mute":
            raise Mute()
        if command.how == "tz":
            from zoneinfo import ZoneInfo

            return [Acted(at=datetime.datetime(2026, 6, 1, 12, tzinfo=ZoneInfo("Europe/Paris")))]
        return [Acted()]

    @classmethod
    def evolve(cls, state: Acts, event: Acted) -> Acts:
        label = event.at.tzname() or "" if event.at is not None else ""
        return Acts(count=state.count + 1, labels=(*state.labels, label))
