"""Monitoring (issue 14): every metric the shipped Grafana dashboard queries is on the Prometheus
endpoint of a running store (write path, projections, a backfill), and ``status --watch``
refreshes a live view of throughput, lag and backfill progress, with or without a projector."""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import ray
from click.testing import CliRunner

from es_actors import Store
from es_actors.cli import main
from es_actors.examples.bank import AccountAlreadyOpen, BankAccount, OpenAccount
from es_actors.jobs.backfill import backfill
from tests.backfill_domains import SmallBalances
from tests.test_backfill import write_history
from tests.unit.test_grafana_dashboard import dashboard, referenced_metrics


@pytest.fixture(scope="module")
def monitored(ray_session, tmp_path_factory):
    """A store with a projection, written to (a rejection too), and one finished backfill beside it."""
    store = Store.open(tmp_path_factory.mktemp("mon") / "store", [BankAccount], partitions=2, seal_rows=100, projections=[SmallBalances])
    accounts = [f"m-{i}" for i in range(8)]
    store.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
    with pytest.raises(AccountAlreadyOpen):
        store.aggregate(BankAccount, accounts[0]).submit(OpenAccount(owner="again"))
    write_history(store, random.Random(5), accounts, 200, seal_every=90)
    store.projections.wait_for("balances", None, timeout=30)
    report = backfill(store.root, SmallBalances, [BankAccount], parallelism=2, progress=False, task_events=80)
    assert report.instance == "balances__v1"
    yield store
    store.close()


def scrape_names(port: int) -> set[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_metric_the_dashboard_queries_is_on_the_prometheus_endpoint_of_a_running_store(monitored):
    wanted = referenced_metrics()
    assert len(wanted) >= 12, wanted  # the parse found the dashboard's metrics
    port = ray._private.worker.global_worker.node.metrics_export_port
    deadline, shown = time.monotonic() + 60, set()
    while time.monotonic() < deadline:
        shown = scrape_names(port)
        if wanted <= shown:
            break
        time.sleep(2)
    assert not wanted - shown, f"the dashboard queries metrics the endpoint does not show: {sorted(wanted - shown)}"


def test_status_watch_refreshes_throughput_lag_and_backfill_progress(monitored):
    out = CliRunner().invoke(main, ["status", "--watch", "--count", "2", "--interval", "0.2", "--store", str(monitored.root)])
    assert out.exit_code == 0, out.output
    assert out.output.count("refresh 1 ") == 1 and out.output.count("refresh 2 ") == 1  # off a terminal: each refresh in turn
    assert "live, from the store's projector" in out.output
    for shown in ("Writes", "events/s", "Projections", "balances", "running", "Backfills", "balances v1", "installed", "100.0"):
        assert shown in out.output, (shown, out.output)


def test_status_watch_without_a_projector_reads_committed_checkpoints(store_factory):
    store = store_factory("quiet", partitions=2, projections=[SmallBalances])
    store.submit_many([(BankAccount, f"q-{i}", OpenAccount(owner="q")) for i in range(4)])
    store.projections.wait_for("balances", None, timeout=30)
    store.close()  # the projector stops with it: status reads the read-model file
    out = CliRunner().invoke(main, ["status", "--watch", "--count", "1", "--store", str(store.root)])
    assert out.exit_code == 0, out.output
    assert "committed checkpoints" in out.output and "stopped" in out.output and "Backfills" not in out.output
    # Ctrl-C ends the view cleanly (exit 0, no traceback)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "es_actors.cli", "status", "--watch", "--interval", "0.2", "--store", str(store.root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = watcher.stdout.readline()  # the first refresh's heading line: the view is up
    while first and b"refresh 1 " not in first:
        first = watcher.stdout.readline()
    watcher.send_signal(signal.SIGINT)
    stdout, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0 and b"refresh 1 " in first and b"Traceback" not in stderr, stderr.decode()


def test_status_watch_with_json_is_a_usage_error(tmp_path):
    out = CliRunner().invoke(main, ["status", "--watch", "--json", "--store", str(tmp_path)])
    assert out.exit_code == 2 and "--watch draws tables" in out.output


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus binary (apt-get install prometheus)")
def test_the_dashboards_queries_run_in_prometheus_and_find_series(monitored, tmp_path):
    """A real Prometheus scrapes the node; each panel query (Grafana's variables filled in as the
    Ray dashboard fills them) parses and returns series; only the stalled/halted filter is empty."""
    port = ray._private.worker.global_worker.node.metrics_export_port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        web = s.getsockname()[1]
    (tmp_path / "prom.yml").write_text(
        f"global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: ray\n  static_configs:\n  - targets: ['127.0.0.1:{port}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prom.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(expr: str) -> list:
        q = expr.replace("$__rate_interval", "1m").replace('"$SessionName"', '".+"').replace('"$projection"', '".*"')
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        answer = json.load(urllib.request.urlopen(url, timeout=5))
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the backfill gauges are scraped twice (rate needs two samples)
            try:
                if query("count_over_time(ray_es_actors_backfill_events_done[1m])") and \
                        min(float(r["value"][1]) for r in query("count_over_time(ray_es_actors_commands_total[1m])")) >= 2:
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(1)
        empty = []
        for p in dashboard()["panels"]:
            for t in p.get("targets", []):
                if not query(t["expr"]) and 'status=~"halted|stalled"}) > 0' not in t["expr"]:
                    empty.append((p["title"], t["expr"]))
        assert not empty, empty
    finally:
        prom.terminate()
        prom.wait(timeout=30)
