"""Kubernetes manifests, validated offline: every built-in resource against the Kubernetes OpenAPI schemas
shipped in `kubernetes-validate` (strict: unknown fields are errors), the ServiceMonitor against the part of
the Prometheus Operator's CRD it uses, the PrometheusRule against the promtool-tested rules, and the
references between them (selectors, ports, probe paths)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPOSITORY_ROOT / "deploy" / "k8s"
# The oldest Kubernetes still widely run and the newest the schemas know.
# ingress-nginx's upstream-keepalive-timeout and AWS ALB's idle timeout.
INGRESS_IDLE_TIMEOUT_S = 60.0
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version() + ".0")

# monitoring.coreos.com/v1 ServiceMonitor: the fields this repository sets, with the operator's types.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def manifests() -> dict[str, dict]:
    """Every resource of deploy/k8s by kind (one of each)."""
    resources = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                assert document["kind"] not in resources, f"{path.name}: a second {document['kind']}"
                resources[document["kind"]] = document
    return resources


def test_manifests_hold_every_piece() -> None:
    assert set(manifests()) >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_resources_match_the_kubernetes_schema(version: str) -> None:
    for kind, resource in manifests().items():
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's resources: checked below
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{kind} against Kubernetes {version}: {'.'.join(map(str, error.path))}: {error.message}"
            )


def test_servicemonitor_matches_the_operator_schema() -> None:
    jsonschema.validate(manifests()["ServiceMonitor"], SERVICE_MONITOR_SCHEMA)


def test_prometheusrule_carries_exactly_the_compose_rules() -> None:
    """One set of rules: the operator's copy must equal docker/prometheus/rules.yml (promtool-tested)."""
    rule = manifests()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule["spec"]) == {"groups"}
    compose_rules = yaml.safe_load((REPOSITORY_ROOT / "docker" / "prometheus" / "rules.yml").read_text())
    assert rule["spec"] == compose_rules, (
        "deploy/k8s/prometheusrule.yaml differs from docker/prometheus/rules.yml"
    )


def test_deployment_probes_drain_and_security() -> None:
    deployment = manifests()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000}  # docker/Dockerfile: EXPOSE 8000, OM2P_PORT=8000
    # Ready only with the model loaded and warm; alive as long as the process answers.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # preStop keeps the replica serving while endpoints are withdrawn; the grace period covers it and a drain.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) > 0
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + 10
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Idle connections: the ingress (60 s idle timeout) must close first, never the server.
    env = {item["name"]: item["value"] for item in container["env"]}
    assert float(env["OM2P_KEEP_ALIVE_S"]) > INGRESS_IDLE_TIMEOUT_S
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_service_hpa_and_monitor_point_at_the_deployment() -> None:
    resources = manifests()
    deployment, service = resources["Deployment"], resources["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert resources["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # one can drain while one serves
    monitor = resources["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"
    # The operator names the job after the Service: the rules' `up{job="om2p"}` depends on it.
    assert service["metadata"]["name"] == "om2p"
