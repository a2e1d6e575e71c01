"""``es-actors monitoring``: the es_actors Grafana dashboard (package data), printed or put where the
Grafana configuration Ray generates reads its dashboards, so it shows beside Ray's own.

Ray's dashboard module writes ``<session>/metrics/grafana/`` at head start: ``grafana.ini``, a
datasource named ``Prometheus`` and a file provider (``provisioning/dashboards/default.yml``)
whose ``path`` is the dashboards directory (``<session>/metrics/grafana/dashboards`` unless
``RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR`` moves it). A Grafana started with that ini reads
every JSON in the directory, within its rescan interval, into the folder "Ray".
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path

import click

from es_actors.errors import EsActorsError

DASHBOARD_FILE = "es_actors_dashboard.json"
DASHBOARD_UID = "esActorsDashboard"
SESSION_LATEST = Path("/tmp/ray/session_latest")
_PROVIDER_PATH = re.compile(r"^\s*path:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", re.MULTILINE)


def dashboard_text() -> str:
    """The dashboard JSON shipped in the package."""
    return (resources.files("es_actors") / "monitoring" / "grafana" / DASHBOARD_FILE).read_text()


def ray_dashboards_dir(session_dir: Path = SESSION_LATEST) -> Path:
    """The directory Ray's generated Grafana provisioning reads dashboards from, for the Ray
    session at ``session_dir`` (as its ``provisioning/dashboards/default.yml`` names it)."""
    metrics = Path(os.environ.get("RAY_METRICS_OUTPUT_ROOT", session_dir / "metrics"))
    provider = metrics / "grafana" / "provisioning" / "dashboards" / "default.yml"
    if not provider.is_file():
        raise EsActorsError(
            f"no Grafana provisioning from Ray at {provider}: Ray writes it when a head starts with its dashboard "
            "(`ray start --head`, or ray.init with include_dashboard) and ray[default]; pass --session-dir for "
            "another session, or --dir for a Grafana of your own"
        )
    found = _PROVIDER_PATH.search(provider.read_text())
    if found is None:
        raise EsActorsError(f"{provider} names no dashboards path (not the file provider Ray writes)")
    return Path(found.group(1))


def install_dashboard(target: Path) -> Path:
    """Copy the dashboard JSON into ``target`` (written whole, then renamed into place)."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{DASHBOARD_FILE}.tmp"
        tmp.write_text(dashboard_text())
        final = target / DASHBOARD_FILE
        shutil.move(str(tmp), final)
    except OSError as exc:
        raise EsActorsError(f"cannot write the dashboard into {target}: {exc.strerror or exc}") from None
    return final


@click.group()
def monitoring() -> None:
    """The es_actors Grafana dashboard: print it, or install it beside Ray's dashboards."""


@monitoring.command()
def dashboard() -> None:
    """Print the dashboard JSON (to import into any Grafana with a Prometheus that scrapes Ray)."""
    click.echo(dashboard_text(), nl=False)


@monitoring.command("install-dashboard")
@click.option("--session-dir", type=click.Path(file_okay=False, path_type=Path), default=SESSION_LATEST,
              show_default=True, help="The Ray session whose generated Grafana configuration to use.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy into this directory instead (a Grafana file provider of your own).")
def install(session_dir: Path, directory: Path | None) -> None:
    """Copy the dashboard where Ray's generated Grafana provisioning reads dashboards from.

    Run it after the Ray head started (Ray rewrites that directory at each start); a Grafana
    started with Ray's grafana.ini shows "es_actors" in the folder Ray within seconds."""
    target = directory if directory is not None else ray_dashboards_dir(session_dir)
    path = install_dashboard(target)
    title = json.loads(dashboard_text())["title"]
    click.echo(f"installed {title!r} (uid {DASHBOARD_UID}) at {path}")
    host = os.environ.get("RAY_GRAFANA_HOST", "http://localhost:3000").rstrip("/")
    click.echo(f"open it at {host}/d/{DASHBOARD_UID}/?var-datasource=Prometheus")
