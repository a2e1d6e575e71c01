"""``es-actors status --watch``: a live terminal view for a machine without Grafana: write
throughput per partition (the durable heads' movement), lag per projection, backfill progress.

It reads what ``status`` reads (the running projector when this joins its cluster, else the
committed checkpoints) plus the log heads and the backfill directories in the store, so it
works with and without a running projector and never writes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from es_actors.errors import EsActorsError
from es_actors.read.backfill.files import BackfillDir
from es_actors.read.backfill.work import backfilled_versions, open_work
from es_actors.storage.backends import durable_heads
from es_actors.read.progress import STATUSES
from es_actors.storage.layout import StoreLayout

_VERSION_DIR = re.compile(r"v(\d+)(?:-(.+))?")
_BAD = ("halted", "stalled")


@dataclass
class Frame:
    """One refresh: what the view shows, and the figures the next refresh measures rates against."""

    at: float
    heads: dict[int, int]
    projections: list[dict[str, Any]]
    backfills: list[dict[str, Any]]
    live: bool
    rates: dict[int, float | None] = field(default_factory=dict)

    @property
    def bad(self) -> bool:
        return any(p["status"] in _BAD for p in self.projections)


def _worst(statuses: list[str]) -> str:
    order = {s: i for i, s in enumerate(STATUSES)}
    return max(statuses, key=lambda s: order.get(s, -1), default="?")


def projection_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per projection: lag summed over partitions, the oldest unapplied event's age, the worst status."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r["projection"], {"projection": r["projection"], "version": r.get("version"), "lag_events": 0,
                                             "lag_seconds": None, "events_per_s": 0.0, "statuses": [], "last_error": None})
        s["lag_events"] += r["lag_events"] or 0
        if r.get("lag_seconds") is not None:
            s["lag_seconds"] = max(s["lag_seconds"] or 0.0, float(r["lag_seconds"]))
        s["events_per_s"] += float(r.get("events_per_s") or 0.0)
        s["statuses"].append(r["status"])
        s["last_error"] = s["last_error"] or r.get("last_error")
    for s in out.values():
        s["status"] = _worst(s.pop("statuses"))
    return list(out.values())


def backfill_progress(layout: StoreLayout, projections: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every backfill of the store: tasks finished, positions replayed as of each task's last
    checkpoint, and whether it is installed (from its plan, checkpoints and installed mark). A local
    store's are found in its ``backfills`` directory; an object store's by the versions backfilled
    of each of ``projections`` (an object store lists no directories)."""
    out: list[dict[str, Any]] = []
    if not layout.scheme:
        base = layout.root / "backfills"
        for pdir in sorted(base.iterdir()) if base.is_dir() else []:
            for vdir in sorted(pdir.iterdir()) if pdir.is_dir() else []:
                m = _VERSION_DIR.fullmatch(vdir.name)
                if m is not None and vdir.is_dir():
                    _add_progress(out, f"{pdir.name} {vdir.name}", BackfillDir(layout.root, pdir.name, int(m[1]), m[2] or ""))
        return out
    for name in sorted(set(projections)):
        for version in backfilled_versions(layout, name):
            _add_progress(out, f"{name} v{version}", open_work(layout, name, version))
    return out


def _add_progress(out: list[dict[str, Any]], label: str, work: Any) -> None:
    row: dict[str, Any] = {"backfill": label, "tasks": 0, "tasks_done": 0, "done": 0, "total": 0}
    try:
        plan = work.load_plan()
    except EsActorsError:
        out.append({**row, "state": "unreadable plan"})
        return
    if plan is None:
        return
    for task in plan.tasks:
        ck = work.load_checkpoint(task.id)
        if ck is not None:
            row["done"] += sum(max(0, min(ck.positions.get(i, a), u) - a) for i, (a, u) in task.bounds.items())
            row["tasks_done"] += ck.final
    row.update(tasks=len(plan.tasks), total=plan.events)
    row["state"] = "installed" if work.installed() is not None else (
        "built" if row["tasks_done"] == row["tasks"] else "building or stopped")
    out.append(row)


def take(store: Any, before: Frame | None) -> Frame:
    """Read the store once; rates against ``before`` (None on the first refresh)."""
    from es_actors.read.readmodel import committed_status

    now = time.monotonic()
    heads = durable_heads(store.layout, store.descriptor.partitions)
    live = store.projections.running() is not None
    rows = store.projection_status() if live else committed_status(store.layout, store.descriptor.partitions)
    names = {str(r["projection"]).split("__v")[0] for r in rows}
    frame = Frame(now, heads, projection_summary(rows), backfill_progress(store.layout, names), live)
    dt = now - before.at if before is not None else 0.0
    frame.rates = {p: (h - before.heads.get(p, h)) / dt if before is not None and dt > 0 else None for p, h in heads.items()}
    if before is not None and dt > 0:
        earlier = {b["backfill"]: b["done"] for b in before.backfills}
        for b in frame.backfills:
            b["rate"] = (b["done"] - earlier.get(b["backfill"], b["done"])) / dt
    return frame


def _num(x: float | None, fmt: str = "{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def render(store: Any, frame: Frame, n: int, interval: float) -> Group:
    """The view of one refresh: a heading line and three tables."""
    source = "live, from the store's projector" if frame.live else "committed checkpoints (no projector reached)"
    head = Text.assemble((f"refresh {n}  {datetime.now().strftime('%H:%M:%S')}  every {interval:g} s\n", "bold"),
                         f"projections: {source}\n", f"store: {store.root}")
    writes = Table(title="Writes", title_justify="left")
    for col in ("partition", "head", "events/s"):
        writes.add_column(col, justify="right")
    for part, h in sorted(frame.heads.items()):
        writes.add_row(str(part), f"{h:,}", _num(frame.rates.get(part)))
    writes.add_row("all", f"{sum(frame.heads.values()):,}",
                   _num(None if any(r is None for r in frame.rates.values()) else sum(r or 0.0 for r in frame.rates.values())), style="bold")
    projections = Table(title="Projections", title_justify="left")
    for col, just in (("projection", "left"), ("v", "right"), ("lag events", "right"), ("lag s", "right"),
                      ("status", "left"), ("events/s", "right"), ("last error", "left")):
        projections.add_column(col, justify=just)  # type: ignore[arg-type]
    for p in frame.projections:
        style = "red" if p["status"] in _BAD else "yellow" if p["status"] in ("retrying", "paused") else None
        projections.add_row(p["projection"], str(p["version"] or ""), f"{p['lag_events']:,}", _num(p["lag_seconds"]),
                            p["status"], _num(p["events_per_s"]), (p["last_error"] or "")[:60], style=style)
    parts: list[Any] = [head, writes, projections if frame.projections else Text("no projections")]
    if frame.backfills:
        backfills = Table(title="Backfills (as of each task's last checkpoint)", title_justify="left")
        for col, just in (("backfill", "left"), ("tasks done", "right"), ("positions", "right"), ("%", "right"),
                          ("positions/s", "right"), ("state", "left")):
            backfills.add_column(col, justify=just)  # type: ignore[arg-type]
        for b in frame.backfills:
            pct = 100.0 * b["done"] / b["total"] if b["total"] else 100.0
            backfills.add_row(b["backfill"], f"{b['tasks_done']}/{b['tasks']}", f"{b['done']:,}/{b['total']:,}",
                              f"{pct:.1f}", _num(b.get("rate")), b["state"])
        parts.append(backfills)
    return Group(*parts)


def watch(store: Any, interval: float, count: int | None, console: Console | None = None) -> int:
    """Refresh in place every ``interval`` seconds until Ctrl-C (exit 0) or ``count`` refreshes
    (then 2 if a projection is halted or stalled, as ``status``; else 0). Off a terminal each
    refresh is printed in turn, for logs."""
    console = console or Console()
    frame: Frame | None = None
    n = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else _Printer(console) as view:
            while count is None or n < count:
                if n:
                    time.sleep(interval)
                frame = take(store, frame)
                n += 1
                view.update(render(store, frame, n, interval), refresh=True)
    except KeyboardInterrupt:
        return 0
    return 2 if frame is not None and frame.bad else 0


class _Printer:
    """Live's interface off a terminal: each refresh printed whole."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> "_Printer":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, renderable: Any, refresh: bool = False) -> None:
        self.console.print(renderable)
        self.console.print()
