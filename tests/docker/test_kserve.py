"""The KServe manifests: valid against KServe's own CRD schemas (made strict), in
agreement with the image's own files (ports, healthcheck, run dir, uid, the KServe runtime's
routes) where a deployment depends on it, and within the rules KServe's admission webhook
and Knative apply (as code: no cluster runs here)."""

from __future__ import annotations

import ast
import copy
import json
import re
import subprocess
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support.servers import read_properties

REPO_ROOT = Path(__file__).resolve().parents[2]
KSERVE_DIR = REPO_ROOT / "docker" / "kserve"
SCHEMA_DIR = Path(__file__).parent / "kserve-schemas"
CUSTOM_MANIFESTS = (
    "inferenceservice-cpu.yaml",
    "inferenceservice-gpu.yaml",
    "inferenceservice-autoscale.yaml",
    "inferenceservice-canary.yaml",
)
# This image with RUNTIME=kserve (KServe's Python model server): REST and gRPC ports.
KSERVE_RUNTIME_MANIFEST = "inferenceservice-kserve-runtime.yaml"
# RawDeployment: rolling updates, an HPA, several ports.
RAW_MANIFESTS = (*CUSTOM_MANIFESTS[:3], KSERVE_RUNTIME_MANIFEST)
# Every predictor that is a container of this project's image.
IMAGE_MANIFESTS = (*CUSTOM_MANIFESTS, KSERVE_RUNTIME_MANIFEST)
CANARY_MANIFEST = "inferenceservice-canary.yaml"  # Serverless: traffic split by revision
# Several pods, several TorchServe tokens: token auth off in the pod, auth at the ingress.
INGRESS_AUTH_MANIFESTS = ("inferenceservice-autoscale.yaml", CANARY_MANIFEST)
NETWORK_POLICY = "networkpolicy-ingress-only.yaml"
AUTHORIZATION_POLICY = "authorizationpolicy-istio.yaml"
KUBERNETES_VERSION = "1.33"  # the core kinds' schemas, from the kubernetes-validate package
RUNTIME_MANIFEST = "inferenceservice-torchserve-runtime.yaml"
RUNTIME_V2_MANIFEST = "inferenceservice-torchserve-runtime-v2.yaml"
ALL_MANIFESTS = (*IMAGE_MANIFESTS, RUNTIME_MANIFEST, RUNTIME_V2_MANIFEST)
KSERVE_GATES_SOURCE = REPO_ROOT / "handler" / "fashion_serve" / "kserve_gates.py"
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
    # The envelope wraps the handler's answers: objects, which TorchServe encodes.
    repo_config = yaml.safe_load((REPO_ROOT / "handler" / "model-config.yaml").read_text())
    assert model_config["handler"] == {**repo_config["handler"], "compact_explanations": False}
    assert entry["minWorkers"] == model_config["minWorkers"]
    assert {"model.pt", "fashion_handler.py"} <= names


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
    assert model_config["handler"] == repo_config["handler"]  # compact explanations: no envelope


def mode(manifest: dict) -> str:
    return manifest["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]


@pytest.mark.parametrize("name", RAW_MANIFESTS)
def test_raw_deployments_roll_out_surge_first_with_none_unavailable(name):
    """A new image or model: the new pod starts beside the old, and serves once READY."""
    predictor = load(name)["spec"]["predictor"]
    assert mode(load(name)) == "RawDeployment"
    strategy = predictor["deploymentStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1
    # KServe splits traffic between revisions only in Serverless mode.
    assert "canaryTrafficPercent" not in predictor
    # The old pod leaves the Service before TorchServe is told to stop.
    pre_stop = predictor_container(load(name))["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) > 0
    assert int(pre_stop[1]) < predictor["terminationGracePeriodSeconds"]


def test_canary_sends_a_share_of_traffic_in_serverless_mode():
    manifest = load(CANARY_MANIFEST)
    predictor = manifest["spec"]["predictor"]
    assert mode(manifest) == "Serverless"
    assert 0 < predictor["canaryTrafficPercent"] < 100
    assert "deploymentStrategy" not in predictor  # a Deployment's field: RawDeployment only
    assert predictor["scaleMetric"] in {"concurrency", "rps"}  # Knative's autoscaler metrics


def test_autoscaled_variant_scales_between_replicas_on_cpu():
    predictor = load("inferenceservice-autoscale.yaml")["spec"]["predictor"]
    assert 2 <= predictor["minReplicas"] < predictor["maxReplicas"]
    assert predictor["scaleMetric"] == "cpu"  # what KServe's HPA in RawDeployment scales on
    assert predictor["scaleMetricType"] == "Utilization"
    assert 0 < predictor["scaleTarget"] <= 100
    container = predictor_container(load("inferenceservice-autoscale.yaml"))
    assert container["resources"]["requests"]["cpu"]  # utilization is relative to this


@pytest.mark.parametrize("name", INGRESS_AUTH_MANIFESTS)
def test_scaled_out_pods_leave_authentication_to_the_ingress(name):
    """Token auth off, management on the pod's loopback, no registration, and the pods
    carry the label the NetworkPolicy and the Istio AuthorizationPolicy select."""
    predictor = load(name)["spec"]["predictor"]
    env = {item["name"]: item["value"] for item in predictor_container(load(name))["env"]}
    assert env["TS_DISABLE_TOKEN_AUTHORIZATION"] == "true"
    assert env["TS_MANAGEMENT_ADDRESS"].startswith("http://127.0.0.1:")
    assert env["TS_ENABLE_MODEL_API"] == "false"
    network_selector = load(NETWORK_POLICY)["spec"]["podSelector"]["matchLabels"]
    istio_selector = load(AUTHORIZATION_POLICY)["spec"]["selector"]["matchLabels"]
    assert network_selector.items() <= predictor["labels"].items()
    assert istio_selector.items() <= predictor["labels"].items()


@pytest.mark.parametrize("name", [*CUSTOM_MANIFESTS[:2]])
def test_single_replica_manifests_keep_token_auth_on(name):
    env = {item["name"] for item in predictor_container(load(name))["env"]}
    assert "TS_DISABLE_TOKEN_AUTHORIZATION" not in env
    assert load(name)["spec"]["predictor"]["maxReplicas"] == 1


def test_network_policy_is_a_valid_kubernetes_resource():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    policy = load(NETWORK_POLICY)
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    ports = sorted(port["port"] for rule in spec["ingress"] for port in rule["ports"])
    image = image_paths_and_ports()
    assert ports == sorted([int(image["inference_port"]), int(image["metrics_port"])])
    assert all(rule["from"] for rule in spec["ingress"]), "a rule without `from` admits anyone"


def test_strict_kubernetes_schema_catches_a_misspelt_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    policy = load(NETWORK_POLICY)
    policy["spec"]["podSelectr"] = policy["spec"].pop("podSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)


def test_authorization_policy_matches_strict_istio_schema():
    schema = strict(
        json.loads((SCHEMA_DIR / "AuthorizationPolicy-istio-v1.schema.json").read_text())
    )
    policy = load(AUTHORIZATION_POLICY)
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert policy["kind"] == "AuthorizationPolicy"
    assert DNS_1123_LABEL.match(policy["metadata"]["name"])
    # The CRD's schema covers spec (and status); apiVersion, kind and metadata are checked above.
    jsonschema.validate({"spec": policy["spec"]}, schema)
    assert policy["spec"]["action"] == "ALLOW"
    inference_port = image_paths_and_ports()["inference_port"]
    for rule in policy["spec"]["rules"]:
        ports = {port for to in rule["to"] for port in to["operation"]["ports"]}
        if inference_port in ports:  # inference only with a JWT the ingress verified
            assert all(source["source"]["requestPrincipals"] for source in rule["from"])


# --- the image's KServe runtime (RUNTIME=kserve) -----------------------------------------------


def kserve_runtime_open_paths() -> set[str]:
    """The routes the KServe runtime answers without a token (OPEN_PATHS), read from its
    source: checking a manifest needs neither kserve nor torch imported."""
    tree = ast.parse(KSERVE_GATES_SOURCE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "OPEN_PATHS" for target in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"no OPEN_PATHS in {KSERVE_GATES_SOURCE}")


def kserve_image_ports() -> dict[str, int]:
    """The ports the entrypoint gives the KServe runtime (tests/docker/test_docker_files.py
    checks they reach its command line)."""
    entrypoint = (REPO_ROOT / "docker" / "entrypoint.sh").read_text()
    return {
        name: int(re.search(rf"^kserve_{name}_port=(\d+)$", entrypoint, re.M)[1])
        for name in ("http", "grpc")
    }


def exposed_ports() -> set[int]:
    (line,) = re.findall(r"^EXPOSE (.+)$", dockerfile_text(), re.M)
    return {int(port) for port in line.split()}


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def probes(container: dict) -> dict[str, dict]:
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    return {kind: container[kind] for kind in kinds if kind in container}


def check_kserve_runtime_manifest(manifest: dict) -> None:
    """Asserts that the manifest runs the image's KServe runtime as the image serves it."""
    image, ports = image_paths_and_ports(), kserve_image_ports()
    predictor = manifest["spec"]["predictor"]
    container = predictor_container(manifest)
    env = env_of(container)
    assert env["RUNTIME"] == "kserve"
    default_model = re.search(r"^ARG MODEL_NAME=(\S+)$", dockerfile_text(), re.M)[1]
    assert env["MODEL_NAME"] == default_model  # the archive the image bakes in
    # HTTP first (KServe's Service maps port 80 to the first port), then OIP gRPC; both are
    # the entrypoint's and exposed by the image.
    declared = [(port["name"], port["containerPort"]) for port in container["ports"]]
    assert declared == [("http1", ports["http"]), ("grpc", ports["grpc"])]
    assert {ports["http"], ports["grpc"]} <= exposed_ports()
    # Prometheus scrapes /metrics on the REST port, without a token.
    annotations = manifest["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["http"])
    assert annotations["prometheus.io/path"] in kserve_runtime_open_paths()
    # The kubelet sends no token: every probe is an HTTP GET on a route open without one.
    assert set(probes(container)) == {"startupProbe", "readinessProbe", "livenessProbe"}
    for kind, probe in probes(container).items():
        assert probe["httpGet"]["port"] == ports["http"], kind
        assert probe["httpGet"]["path"] in kserve_runtime_open_paths(), kind
    assert probes(container)["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert predictor["securityContext"]["runAsUser"] == int(image["uid"])
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The key file (and the workers' metrics files) land in a writable, pod-private volume at
    # the run dir the entrypoint and the healthcheck use.
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    (volume,) = [v for v in predictor["volumes"] if v["name"] == mounts[image["run_dir"]]]
    assert "emptyDir" in volume
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_kserve_runtime_manifest_agrees_with_the_image():
    check_kserve_runtime_manifest(load(KSERVE_RUNTIME_MANIFEST))


@pytest.mark.parametrize(
    "breaks",
    [
        # a probe on a route that needs a token: the pod never becomes ready
        lambda c: c["readinessProbe"]["httpGet"].update(path="/v2/models/fashion-cnn/ready"),
        lambda c: c["startupProbe"]["httpGet"].update(path="/ping"),  # TorchServe's, not here
        lambda c: c["ports"][1].update(containerPort=8081),  # gRPC where nothing listens
        lambda c: c["livenessProbe"]["httpGet"].update(port=8082),
        lambda c: c["ports"].reverse(),  # gRPC first would become the Service's port 80
        lambda c: c["env"].pop(0),  # no RUNTIME: TorchServe, which has no /v2/health routes
    ],
    ids=["token-route", "ts-ping", "grpc-port", "probe-port", "port-order", "no-runtime"],
)
def test_a_wrong_port_or_path_in_the_kserve_runtime_manifest_fails(breaks):
    manifest = load(KSERVE_RUNTIME_MANIFEST)
    breaks(predictor_container(manifest))
    with pytest.raises((AssertionError, KeyError)):
        check_kserve_runtime_manifest(manifest)


def test_kserve_runtime_manifest_keeps_token_auth_on_with_one_replica():
    """The runtime makes random keys per start: one replica, whose keys kubectl exec reads."""
    manifest = load(KSERVE_RUNTIME_MANIFEST)
    env = env_of(predictor_container(manifest))
    assert env.get("DISABLE_TOKEN_AUTHORIZATION", "false") != "true"
    assert manifest["spec"]["predictor"]["maxReplicas"] == 1


# KServe's admission webhook (pkg/apis/serving/v1beta1/inference_service_validation.go,
# predictor_custom.go, pkg/validation/env_policy.go) and Knative's, as code.
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # IsvcNameFmt: starts with a letter
KSERVE_BLOCKED_ENV = {"PYTHONPATH"}  # DefaultBlockedEnvVars, since KServe 0.18
KSERVE_PROTOCOLS = {"v1", "v2"}  # what a custom predictor's PROTOCOL may say
KNATIVE_PORT_NAMES = {"http1", "h2c"}  # Serverless: one port, and one of these names


@pytest.mark.parametrize("name", ALL_MANIFESTS)
def test_names_pass_kserve_webhook(name):
    assert ISVC_NAME.match(load(name)["metadata"]["name"])


@pytest.mark.parametrize("name", IMAGE_MANIFESTS)
def test_custom_predictors_pass_kserve_webhook_and_knative_rules(name):
    manifest = load(name)
    container = predictor_container(manifest)
    # KServe finds the predictor's container by this name (CustomPredictor.GetContainer).
    assert container["name"] == "kserve-container"
    env = env_of(container)
    assert not KSERVE_BLOCKED_ENV & env.keys(), "KServe's webhook refuses these variables"
    assert env.get("PROTOCOL", "v1") in KSERVE_PROTOCOLS
    ports = container["ports"]
    if mode(manifest) == "Serverless":
        # Knative serves one port per revision: HTTP and gRPC together need RawDeployment.
        assert len(ports) == 1 and ports[0]["name"] in KNATIVE_PORT_NAMES
    else:
        assert mode(manifest) == "RawDeployment"
    # Istio picks each port's protocol from its name (KServe copies it to the Service).
    for port in ports:
        assert re.match(r"^(http|grpc|h2c)", port["name"]), port
    assert len({port["containerPort"] for port in ports}) == len(ports)
