"""The Grafana dashboard shipped as package data: valid JSON, every panel on the datasource
variable (as Ray's own dashboards are), unique panel ids, PromQL that names only metrics es_actors
exports under those names; ``install-dashboard`` puts it where Ray's generated provisioning reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from es_actors.cli import main
from es_actors.cli.monitoring import DASHBOARD_FILE, DASHBOARD_UID, dashboard_text, ray_dashboards_dir
from es_actors.errors import EsActorsError
from tests.unit.test_metric_names_in_docs import exported

METRIC = re.compile(r"\bray_es_actors_[a-z0-9_]+")


def dashboard() -> dict:
    return json.loads(dashboard_text())


def panels(d: dict) -> list[dict]:
    return [p for p in d["panels"] if p["type"] != "row"]


def exprs(d: dict) -> list[str]:
    """Every PromQL expression: the panels' targets and the query variables."""
    out = [t["expr"] for p in panels(d) for t in p["targets"]]
    return out + [v["query"]["query"] for v in d["templating"]["list"] if v["type"] == "query"]


def referenced_metrics() -> set[str]:
    """The series names the dashboard's PromQL selects (exact, as exported: ``_total``, ``_bucket``...)."""
    return {m for e in exprs(dashboard()) for m in METRIC.findall(e)}


def test_the_dashboard_is_valid_json_with_unique_ids_and_every_panel_on_the_datasource_variable():
    d = dashboard()
    assert d["uid"] == DASHBOARD_UID and d["title"] == "es_actors"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), ids
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in panels(d):
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        assert all(t["refId"] for t in p["targets"])
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}", v["name"]
    # every panel query follows the session the Ray dashboard passes (var-SessionName)
    assert all('SessionName=~"$SessionName"' in e for e in exprs(d) if "label_values(ray_es_actors_commands_total" not in e)
    grid = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in d["panels"]]
    assert len(grid) == len(set(grid))  # no two panels on one spot


def test_every_metric_the_dashboard_names_is_one_es_actors_exports_and_the_issue_panels_are_there():
    names = exported()
    every = set().union(*names.values())
    wrong = referenced_metrics() - every
    assert not wrong, f"not exported under that name (ray_ prefix, counters _total, histograms _bucket): {wrong}"
    base = {m for m in referenced_metrics()}
    for wanted in ("ray_es_actors_commands_total", "ray_es_actors_events_total", "ray_es_actors_client_call_ms_bucket",
                   "ray_es_actors_batch_ms_bucket", "ray_es_actors_rejections_total", "ray_es_actors_projection_lag_events",
                   "ray_es_actors_projection_lag_seconds", "ray_es_actors_projection_status",
                   "ray_es_actors_backfill_events_done", "ray_es_actors_backfill_events_total"):
        assert wanted in base, wanted
    histograms = [e for e in exprs(dashboard()) if "histogram_quantile" in e]
    assert histograms and all("_bucket" in e and "le" in e for e in histograms)


def test_the_package_data_includes_the_dashboard():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["es_actors"]
    shipped = root / "es_actors" / "monitoring" / "grafana" / DASHBOARD_FILE
    assert shipped.is_file() and any(shipped.match(f"es_actors/{pattern}") for pattern in data)


def ray_session_dir(tmp_path: Path, dashboards: Path) -> Path:
    """A session directory with the dashboard provider Ray's metrics head writes (its own template)."""
    from ray.dashboard.modules.metrics.templates import DASHBOARD_PROVISIONING_TEMPLATE

    session = tmp_path / "session"
    provider = session / "metrics" / "grafana" / "provisioning" / "dashboards"
    provider.mkdir(parents=True)
    (provider / "default.yml").write_text(DASHBOARD_PROVISIONING_TEMPLATE.format(dashboard_output_folder=dashboards))
    return session


def test_install_dashboard_copies_it_where_rays_provisioning_reads_dashboards(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_METRICS_OUTPUT_ROOT", raising=False)
    dashboards = tmp_path / "session" / "metrics" / "grafana" / "dashboards"
    session = ray_session_dir(tmp_path, dashboards)
    assert ray_dashboards_dir(session) == dashboards
    out = CliRunner().invoke(main, ["monitoring", "install-dashboard", "--session-dir", str(session)])
    assert out.exit_code == 0, out.output
    assert json.loads((dashboards / DASHBOARD_FILE).read_text())["uid"] == DASHBOARD_UID
    assert f"/d/{DASHBOARD_UID}/" in out.output
    printed = CliRunner().invoke(main, ["monitoring", "dashboard"])
    assert printed.exit_code == 0 and json.loads(printed.output) == dashboard()


def test_install_dashboard_without_rays_grafana_configuration_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_METRICS_OUTPUT_ROOT", raising=False)
    with pytest.raises(EsActorsError, match="no Grafana provisioning from Ray"):
        ray_dashboards_dir(tmp_path)
    out = CliRunner().invoke(main, ["monitoring", "install-dashboard", "--session-dir", str(tmp_path)])
    assert out.exit_code == 1 and "EsActorsError: no Grafana provisioning from Ray" in out.output
    out = CliRunner().invoke(main, ["monitoring", "install-dashboard", "--dir", str(tmp_path / "mine")])
    assert out.exit_code == 0 and (tmp_path / "mine" / DASHBOARD_FILE).is_file()
