"""The KServe manifests: valid against KServe's own CRD schemas (made strict), and in
agreement with the image's own files (ports, healthcheck, run dir, uid) where a deployment
depends on it."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
KSERVE_DIR = REPO_ROOT / "docker" / "kserve"
SCHEMA_DIR = Path(__file__).parent / "kserve-schemas"
CUSTOM_MANIFESTS = ("inferenceservice-cpu.yaml", "inferenceservice-gpu.yaml")
RUNTIME_MANIFEST = "inferenceservice-torchserve-runtime.yaml"
RUNTIME_V2_MANIFEST = "inferenceservice-torchserve-runtime-v2.yaml"
ALL_MANIFESTS = (*CUSTOM_MANIFESTS, RUNTIME_MANIFEST, RUNTIME_V2_MANIFEST)
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A label value: empty, or up to 63 of [A-Za-z0-9-_.] starting and ending alphanumeric.
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def strict(schema):
    """additionalProperties: false on every object schema with properties, unless it keeps
    unknown fields on purpose: Kubernetes would silently drop a misspelt field."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in node
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@pytest.fixture(scope="module")
def isvc_schema():
    return strict(json.loads((SCHEMA_DIR / "InferenceService-v1beta1.schema.json").read_text()))


def load(name: str) -> dict:
    return yaml.safe_load((KSERVE_DIR / name).read_text())


def predictor_container(manifest: dict) -> dict:
    (container,) = manifest["spec"]["predictor"]["containers"]
    return container


@pytest.mark.parametrize("name", ALL_MANIFESTS)
def test_manifest_matches_strict_kserve_schema(name, isvc_schema):
    manifest = load(name)
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
    assert manifest["kind"] == "InferenceService"
    jsonschema.validate(manifest, isvc_schema)


def test_strict_schema_catches_a_misspelt_field(isvc_schema):
    manifest = load("inferenceservice-cpu.yaml")
    container = predictor_container(manifest)
    container["resource"] = container.pop("resources")  # the typo Kubernetes would drop
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        jsonschema.validate(manifest, isvc_schema)


@pytest.mark.parametrize("name", ALL_MANIFESTS)
def test_names_and_labels_are_valid_kubernetes_names(name):
    metadata = load(name)["metadata"]
    assert DNS_1123_LABEL.match(metadata["name"]), metadata["name"]
    for key, value in metadata.get("labels", {}).items():
        prefix, _, label_name = key.rpartition("/")
        assert not prefix or all(DNS_1123_LABEL.match(part) for part in prefix.split("."))
        assert LABEL_VALUE.match(label_name) and LABEL_VALUE.match(value), (key, value)
    for annotation in metadata.get("annotations", {}).values():
        assert isinstance(annotation, str), "annotation values must be strings (quote them)"


def dockerfile_text() -> str:
    return re.sub(r"\\\n", " ", (REPO_ROOT / "docker" / "Dockerfile").read_text())


def image_paths_and_ports() -> dict[str, str]:
    """What the manifests must agree with, read from the image's own files."""
    dockerfile = dockerfile_text()
    container_config = read_properties((REPO_ROOT / "docker" / "config.properties").read_text())
    return {
        "healthcheck": re.search(r"^COPY docker/healthcheck\.py (\S+)$", dockerfile, re.M)[1],
        "run_dir": re.search(r"\bTS_RUN_DIR=(\S+)", dockerfile)[1],
        "uid": re.search(r"^USER (\d+)", dockerfile, re.M)[1],
        "inference_port": container_config["inference_address"].rsplit(":", 1)[1],
        "metrics_port": container_config["metrics_address"].rsplit(":", 1)[1],
    }


@pytest.mark.parametrize("name", CUSTOM_MANIFESTS)
def test_custom_container_agrees_with_the_image(name):
    image = image_paths_and_ports()
    manifest = load(name)
    predictor = manifest["spec"]["predictor"]
    container = predictor_container(manifest)
    assert [port["containerPort"] for port in container["ports"]] == [int(image["inference_port"])]
    assert manifest["metadata"]["annotations"]["prometheus.io/port"] == image["metrics_port"]
    # Ready only when the model is: the image's healthcheck, not a bare TCP or /ping.
    assert container["readinessProbe"]["exec"]["command"][-1] == image["healthcheck"]
    assert predictor["securityContext"]["runAsUser"] == int(image["uid"])
    # The key file lands in a writable, pod-private volume at the image's run dir.
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    (volume,) = [v for v in predictor["volumes"] if v["name"] == mounts[image["run_dir"]]]
    assert "emptyDir" in volume


def test_gpu_manifest_differs_from_cpu_only_where_it_must():
    cpu, gpu = load("inferenceservice-cpu.yaml"), load("inferenceservice-gpu.yaml")
    for manifest in (cpu, gpu):
        container = predictor_container(manifest)
        container.pop("image")
        container.pop("resources")
        manifest["spec"]["predictor"].pop("tolerations", None)
        manifest["metadata"].pop("name")
    assert cpu == gpu


def read_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def test_make_storage_builds_the_layout_the_stock_runtime_reads(tiny_export_dir, tmp_path):
    out_dir = tmp_path / "storage"
    subprocess.run(
        [str(KSERVE_DIR / "make-storage.sh"), "--export-dir", str(tiny_export_dir), str(out_dir)],
        check=True,
        capture_output=True,
    )
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    assert files == [
        "config/config.properties",
        "config/metrics.yaml",
        "model-store/fashion-cnn.mar",
    ]

    properties = read_properties((out_dir / "config" / "config.properties").read_text())
    # storageUri is mounted at /mnt/models: the metrics file declaring the handler's metrics.
    assert properties["metrics_config"] == "/mnt/models/config/metrics.yaml"
    assert (out_dir / "config" / "metrics.yaml").read_bytes() == (
        REPO_ROOT / "monitoring" / "metrics.yaml"
    ).read_bytes()
    assert properties["inference_address"] == "http://0.0.0.0:8085"
    assert properties["model_store"] == "/mnt/models/model-store"
    assert properties["service_envelope"] in {"kserve", "kservev2"}
    assert properties["enable_model_api"] == "false"
    snapshot = json.loads(properties["model_snapshot"])
    assert snapshot["modelCount"] == 1
    (versions,) = snapshot["models"].values()
    (entry,) = versions.values()
    assert entry["marName"] == "fashion-cnn.mar"
    assert entry["defaultVersion"] is True
    assert entry["batchSize"] == 1

    # The archive's own config agrees (it wins over the snapshot in TorchServe).
    with zipfile.ZipFile(out_dir / "model-store" / "fashion-cnn.mar") as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        model_config = yaml.safe_load(archive.read(manifest["model"]["configFile"]))
        names = set(archive.namelist())
    assert model_config["batchSize"] == 1
    assert entry["minWorkers"] == model_config["minWorkers"]
    assert {"model.pt", "index_to_name.json", "fashion_handler.py"} <= names


def test_runtime_manifests_differ_only_in_protocol_name_and_storage():
    v1, v2 = load(RUNTIME_MANIFEST), load(RUNTIME_V2_MANIFEST)
    assert v2["spec"]["predictor"]["model"].pop("protocolVersion") == "v2"
    assert v1["spec"]["predictor"]["model"].pop("protocolVersion") == "v1"
    for manifest in (v1, v2):
        manifest["metadata"].pop("name")
        manifest["spec"]["predictor"]["model"].pop("storageUri")
    assert v1 == v2


def test_make_storage_v2_keeps_batching_and_sets_no_envelope(tiny_export_dir, tmp_path):
    out_dir = tmp_path / "storage"
    subprocess.run(
        [
            str(KSERVE_DIR / "make-storage.sh"),
            "--protocol",
            "v2",
            "--export-dir",
            str(tiny_export_dir),
            str(out_dir),
        ],
        check=True,
        capture_output=True,
    )
    properties = read_properties((out_dir / "config" / "config.properties").read_text())
    assert "service_envelope" not in properties
    # The runtime sets TS_SERVICE_ENVELOPE=kservev2 for protocol v2: it must not apply.
    assert properties["enable_envvars_config"] == "false"
    (versions,) = json.loads(properties["model_snapshot"])["models"].values()
    (entry,) = versions.values()
    with zipfile.ZipFile(out_dir / "model-store" / "fashion-cnn.mar") as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        model_config = yaml.safe_load(archive.read(manifest["model"]["configFile"]))
    repo_config = yaml.safe_load((REPO_ROOT / "handler" / "model-config.yaml").read_text())
    assert model_config["batchSize"] == entry["batchSize"] == repo_config["batchSize"] > 1
