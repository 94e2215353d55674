"""The KServe manifests: valid against KServe's own CRD schemas (made strict), and right
in the fields a deployment depends on."""

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
ALL_MANIFESTS = (*CUSTOM_MANIFESTS, RUNTIME_MANIFEST)
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A label value: empty, or up to 63 of [A-Za-z0-9-_.] starting and ending alphanumeric.
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
HEALTHCHECK = "/usr/local/bin/fashion-serve-healthcheck"


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


@pytest.mark.parametrize("name", CUSTOM_MANIFESTS)
def test_custom_container_serves_this_image_safely(name):
    manifest = load(name)
    predictor = manifest["spec"]["predictor"]
    container = predictor_container(manifest)
    target = "gpu" if "gpu" in name else "cpu"
    assert container["image"].endswith(f"/fashion-serve:{target}")
    assert [port["containerPort"] for port in container["ports"]] == [8080]

    # Ready only when the model is: the image's healthcheck, not a bare TCP or /ping.
    readiness = container["readinessProbe"]
    assert readiness["exec"]["command"][-1] == HEALTHCHECK

    # The key file lands in a writable, pod-private volume at the path the image uses.
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    run_volume = mounts["/home/model-server/run"]
    (volume,) = [v for v in predictor["volumes"] if v["name"] == run_volume]
    assert "emptyDir" in volume
    # Keys are random per pod (TorchServe 0.12 cannot take given keys): one replica.
    assert predictor["minReplicas"] == predictor["maxReplicas"] == 1

    security = predictor["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]

    annotations = manifest["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8082"

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys()
    if target == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in predictor["tolerations"])
    else:
        assert "nvidia.com/gpu" not in resources["limits"]


def test_gpu_manifest_differs_from_cpu_only_where_it_must():
    cpu, gpu = load("inferenceservice-cpu.yaml"), load("inferenceservice-gpu.yaml")
    for manifest in (cpu, gpu):
        container = predictor_container(manifest)
        container.pop("image")
        container.pop("resources")
        manifest["spec"]["predictor"].pop("tolerations", None)
        manifest["metadata"].pop("name")
    assert cpu == gpu


def test_stock_runtime_manifest_uses_the_pytorch_runtime():
    manifest = load(RUNTIME_MANIFEST)
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["protocolVersion"] == "v1"
    assert re.match(r"^(pvc|gs|s3|https?)://", model["storageUri"])
    assert "containers" not in manifest["spec"]["predictor"]


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
    assert files == ["config/config.properties", "model-store/fashion-cnn.mar"]

    properties = read_properties((out_dir / "config" / "config.properties").read_text())
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
