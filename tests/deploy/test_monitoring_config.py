"""Prometheus config, alert rules and the Grafana dashboard, checked offline: promtool's own checks and rule
unit tests, and the dashboard and rules checked against the metrics the server really registers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
PROMETHEUS_DIR = DOCKER_DIR / "prometheus"
GRAFANA_DIR = DOCKER_DIR / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "om2p.json"
# A metric name, not part of a recording rule's `level:metric:operations` name.
METRIC_NAME = re.compile(r"(?<![:\w])om2p_[a-z_]*[a-z](?![:\w])")


def run_promtool(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


def dashboard_targets() -> list[tuple[dict, dict]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel, target) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def server_metric_names() -> set[str]:
    """Every sample name the server exposes (histograms with their _bucket/_sum/_count series)."""
    from server.metrics import ServerMetrics

    names = set()
    for family in ServerMetrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_promtool_check_config(promtool: str) -> None:
    result = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert {"Om2pLatencyP99High", "Om2pErrorRatioHigh", "Om2pQueueSaturated", "Om2pTargetDown"} <= alerts
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]
    firing = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    assert alerts == firing, f"alerts never shown firing in rules_test.yml: {alerts - firing}"


def test_dashboard_and_rules_use_only_metrics_the_server_exposes() -> None:
    exposed = server_metric_names()
    texts = [target["expr"] for _, target in dashboard_targets()]
    texts.append((PROMETHEUS_DIR / "rules.yml").read_text())
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert used, "no om2p_ metric found in the dashboard"
    unknown = sorted(used - exposed)
    assert not unknown, f"not exposed by server.metrics: {unknown}"


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        (
            "p50 latency",
            r"histogram_quantile\(0\.5, sum by \(le\) \(rate\(om2p_request_duration_seconds_bucket",
        ),
        (
            "p90 latency",
            r"histogram_quantile\(0\.9, sum by \(le\) \(rate\(om2p_request_duration_seconds_bucket",
        ),
        (
            "p99 latency",
            r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(om2p_request_duration_seconds_bucket",
        ),
        ("request rate", r"rate\(om2p_request_duration_seconds_count"),
        ("batch-size distribution", r"om2p_batch_rows_bucket"),
        ("queue wait", r"om2p_queue_wait_seconds_bucket"),
        ("compute", r"om2p_compute_seconds_bucket"),
        ("error ratio by outcome", r"sum by \(outcome\) \(rate\(om2p_requests_total\{outcome!=\"ok\"\}"),
        ("in-flight", r"om2p_inflight_requests"),
        ("queue depth", r"om2p_queue_rows"),
        ("model version", r"om2p_model_info"),
    ],
)
def test_dashboard_shows(what: str, pattern: str) -> None:
    assert any(re.search(pattern, target["expr"]) for _, target in dashboard_targets()), what


def test_dashboard_is_well_formed_for_grafana() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    for panel, target in dashboard_targets():
        assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert target["refId"], panel["title"]
    refs = [(panel["id"], target["refId"]) for panel, target in dashboard_targets()]
    assert len(refs) == len(set(refs)), "duplicate refId within a panel"
    # Panels must not overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"panel {panel['title']!r} overlaps another"
        cells |= area


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (datasource,) = datasources["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert datasource["type"] == variable["query"] == "prometheus"
    assert datasource["uid"] == variable["current"]["value"]
    compose = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "om2p.yml").read_text())
    (provider,) = providers["providers"]
    host_path_by_container_path = {
        volume.split(":")[1]: volume.split(":")[0] for volume in compose["services"]["grafana"]["volumes"]
    }
    assert host_path_by_container_path[provider["options"]["path"]] == "./grafana/dashboards"
