"""The docs name metrics exactly as Ray exports them: prefixed ``ray_``, a counter with ``_total``, a
histogram as ``_bucket`` / ``_sum`` / ``_count`` (what a Prometheus query or a dashboard must use)."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFINED = re.compile(r'metrics\.(Counter|Gauge|Histogram)\(\s*"([a-z0-9_]+)"')
NAMED = re.compile(r"`((?:ray_)?es_actors_[a-z0-9_*]+)`")


def exported() -> dict[str, set[str]]:
    """Each metric es_actors defines -> the names it shows under on the Prometheus endpoint."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / "es_actors").rglob("*.py"):
        for kind, name in DEFINED.findall(path.read_text()):
            base = f"ray_{name}"
            out[name] = {f"{base}_total"} if kind == "Counter" else (
                {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if kind == "Histogram" else {base})
    return out


def test_every_metric_named_in_the_docs_is_exported_under_that_name_and_the_readme_names_them_all():
    names = exported()
    assert "es_actors_commands" in names and "es_actors_projection_lag_seconds" in names  # the scan finds them
    every = set().union(*names.values())
    docs = [ROOT / "README.md", *sorted((ROOT / "adrs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
    wrong = []
    for doc in docs:
        for token in NAMED.findall(doc.read_text()):
            if not (token.startswith("ray_") or "*" in token or any(token.startswith(n) for n in names)):
                continue  # not a metric (e.g. the benchmarks' system `es_actors_readonly`)
            if not any(fnmatch(n, token) for n in every):
                wrong.append(f"{doc.name}: `{token}`")
    assert not wrong, f"not a name Ray exports (ray_ prefix, counters _total, histograms _bucket/_sum/_count): {wrong}"
    readme = (ROOT / "README.md").read_text()
    unnamed = [n for n, shown in names.items() if not any(f"`{s}`" in readme for s in shown)]
    assert not unnamed, f"metrics the README does not name: {unnamed}"
