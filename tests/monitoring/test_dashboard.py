"""The Grafana dashboard and the compose `monitoring` profile fit together without a
Grafana or a Docker engine: every panel queries the provisioned datasource, the mounts
put the files where the provisioning looks, and everything is on loopback with pinned
images. (Each panel's query is run against a live Prometheus in test_prometheus_e2e.)"""

from __future__ import annotations

import json
import re

import yaml

from tests.monitoring.prometheus_helpers import DASHBOARD, MONITORING_DIR, PROMETHEUS_CONFIG

REPO_ROOT = MONITORING_DIR.parent
COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
PROVISIONING = MONITORING_DIR / "grafana" / "provisioning"
PINNED_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+$")


def load_yaml(path):
    return yaml.safe_load(path.read_text())


def services() -> dict:
    return load_yaml(COMPOSE)["services"]


def mounts(service: dict) -> dict[str, str]:
    """container path -> host path (resolved against docker/, as compose does)."""
    result = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            result[target] = (COMPOSE.parent / source).resolve()
    return result


def test_every_panel_queries_the_provisioned_prometheus():
    (datasource,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]


def test_the_panels_cover_what_operators_need():
    exprs = " ".join(
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    )
    for needed in (
        "fashion_handler_latency_seconds_bucket",
        "histogram_quantile(0.99",
        "fashion_refusals_total",
        "fashion:class_prior:ratio",
        "fashion_predictions_total",
        "fashion:inputs_auto_inverted:ratio1h",
        "fashion:input_brightness:mean1h",
        'kind="explanation"',
        "fashion_batches_total",
        'up{job="fashion-serve"}',
    ):
        assert needed in exprs, needed


def test_monitoring_profile_is_pinned_and_on_loopback():
    for name in ("prometheus", "grafana"):
        service = services()[name]
        assert service["profiles"] == ["monitoring"], name
        assert PINNED_TAG.match(service["image"]), service["image"]
        assert service["ports"] and all(p.startswith("127.0.0.1:") for p in service["ports"])
    for service in services().values():
        for port in service.get("ports", []):
            assert port.startswith(("127.0.0.1:", "${BIND_ADDRESS:-127.0.0.1}:")), port


def test_prometheus_service_scrapes_the_model_server_with_the_shipped_files():
    prometheus = services()["prometheus"]
    etc = mounts(prometheus)["/etc/prometheus"]
    assert etc == MONITORING_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    # The container port the serving service exposes its metrics on.
    assert any(p.endswith(f":{port}") for p in services()[host]["ports"]), target
    assert all((etc / rules).exists() for rules in load_yaml(PROMETHEUS_CONFIG)["rule_files"])


def test_grafana_service_mounts_what_the_provisioning_names():
    grafana = services()["grafana"]
    mounted = mounts(grafana)
    assert mounted["/etc/grafana/provisioning"] == PROVISIONING
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "fashion-serve.yml")["providers"]
    assert mounted[provider["options"]["path"]] == DASHBOARD.parent
    (datasource,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
