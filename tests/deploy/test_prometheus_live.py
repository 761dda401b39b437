"""A real Prometheus on loopback scrapes a real `om2p serve` under load, with the compose stack's own scrape
config and rules; then every PromQL expression of the Grafana dashboard and of the rules is evaluated through
Prometheus' HTTP API, and each must return data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
DASHBOARD = DOCKER_DIR / "grafana" / "dashboards" / "om2p.json"
PROMETHEUS_CONFIG = DOCKER_DIR / "prometheus" / "prometheus.yml"
RULES = DOCKER_DIR / "prometheus" / "rules.yml"

SCRAPE_INTERVAL = "1s"
# Grafana's $__rate_interval is max(4 x scrape interval, step); 15 s covers enough 1 s scrapes for rate().
RATE_INTERVAL = "15s"
# An alert is `<measured quantity> <comparison> <threshold>`; under healthy load the whole condition is
# rightly empty, so the measured side is what must return data.
ALERT_CONDITION = re.compile(r"^(?P<measured>.+?)\s*(?:>=|<=|==|!=|>|<)\s*[-+0-9.eE]+\s*$", re.DOTALL)


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (
            f"dashboard: {panel['title']} [{target['refId']}]",
            target["expr"].replace("$__rate_interval", RATE_INTERVAL),
        )
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def rule_expressions() -> list[tuple[str, str]]:
    expressions = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                expressions.append((f"record: {rule['record']}", rule["expr"]))
                expressions.append((f"recorded series: {rule['record']}", rule["record"]))
            else:
                match = ALERT_CONDITION.match(rule["expr"].strip())
                assert match, (
                    f"alert {rule['alert']}: expected `<measured> <op> <threshold>`, got {rule['expr']}"
                )
                expressions.append((f"alert {rule['alert']}: measured side", match["measured"]))
    return expressions


EXPRESSIONS = dashboard_expressions() + rule_expressions()


def query(prometheus: str, expression: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expression}: {body}"
    return body["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, om2p_server: str, act_load, poll_until, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping the shared server every second while it is under load;
    yields its URL once every expression has data (or after a bounded wait, letting the tests name the gaps)."""
    from server.process import free_port

    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    (job,) = [scrape for scrape in config["scrape_configs"] if scrape["job_name"] == "om2p"]
    job["static_configs"] = [{"targets": [om2p_server.removeprefix("http://")]}]
    shutil.copy(RULES, workdir / "rules.yml")  # the config names it relative to itself
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(
                f"prometheus exited with {process.returncode}: {(workdir / 'prometheus.log').read_text()}"
            )
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll_until(ready, timeout_s=30, what="Prometheus to be ready")
        with act_load(max_seconds=120) as load:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(query(url, expression) for _, expression in EXPRESSIONS):
                    break
                time.sleep(1)
            yield url
        assert not load.failures, load.failures[:5]
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def test_prometheus_scrapes_the_server(prometheus: str) -> None:
    (target,) = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert target["labels"]["job"] == "om2p" and target["health"] == "up", target
    assert [sample["value"][1] for sample in query(prometheus, 'up{job="om2p"}')] == ["1"]


@pytest.mark.parametrize(("name", "expression"), EXPRESSIONS, ids=[name for name, _ in EXPRESSIONS])
def test_expression_returns_data(prometheus: str, name: str, expression: str) -> None:
    result = query(prometheus, expression)
    assert result, f"{name}: no data for {expression}"
    # NaN is 0/0 (an empty window): allowed for a series nobody used (a protocol without traffic), but
    # every expression must have at least one real number.
    values = [float(sample["value"][1]) for sample in result]
    assert any(value == value for value in values), f"{name}: only NaN in {result}"


def test_every_rule_is_loaded_and_healthy(prometheus: str) -> None:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = yaml.safe_load(RULES.read_text())["groups"]
    names = [rule.get("record") or rule["alert"] for group in expected for rule in group["rules"]]
    assert sorted(loaded) == sorted(names)
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        # Every rule has been evaluated at least once against live data.
        assert not rule["lastEvaluation"].startswith("0001-"), rule  # Go's zero time: never evaluated


def test_alert_conditions_evaluate(prometheus: str) -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                query(prometheus, rule["expr"])  # a well-formed query; empty is right when nothing is wrong
