#!/usr/bin/env bash
# Lay out a model for KServe's stock TorchServe runtime (storageUri of
# inferenceservice-torchserve-runtime.yaml, or -v2.yaml with --protocol v2):
#   docker/kserve/make-storage.sh [--export-dir DIR | --mar FILE] [--protocol v1|v2] OUT_DIR
#     OUT_DIR/model-store/fashion-cnn.mar
#     OUT_DIR/config/config.properties     (model_snapshot names the archive)
#     OUT_DIR/config/metrics.yaml          (the handler's metrics, monitoring/metrics.yaml)
#   --export-dir DIR  pack model.pt with scripts/archive.sh
#                     (default artifacts/export)
#   --mar FILE        use an archive made already (e.g. model_store/fashion-cnn.mar)
#   --protocol v1     KServe v1 through TorchServe's kserve envelope, batchSize 1, answers
#                     encoded by TorchServe (default)
#   --protocol v2     Open Inference Protocol answered by the handler itself: no envelope
#                     (the runtime's TS_SERVICE_ENVELOPE=kservev2 is ignored), batching kept
# Settings (environment variables): MODEL_NAME=fashion-cnn, VENV=.venv
# Then copy OUT_DIR to the bucket or PVC, e.g. gsutil -m cp -r OUT_DIR/* gs://BUCKET/fashion-cnn/
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/../.." && pwd)

fail() { printf 'make-storage: %s\n' "$*" >&2; exit 1; }

export_dir=${repo_root}/artifacts/export
mar=
out_dir=
protocol=v1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --export-dir) export_dir=${2:?--export-dir needs a value}; shift ;;
        --mar) mar=${2:?--mar needs a value}; shift ;;
        --protocol) protocol=${2:?--protocol needs v1 or v2}; shift ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) fail "unknown option $1" ;;
        *) out_dir=$1 ;;
    esac
    shift
done
[[ -n "$out_dir" ]] || fail "usage: make-storage.sh [--export-dir DIR | --mar FILE] [--protocol v1|v2] OUT_DIR"
[[ "$protocol" == v1 || "$protocol" == v2 ]] || fail "--protocol is v1 or v2, not ${protocol}"
model_name=${MODEL_NAME:-fashion-cnn}
venv=${VENV:-${repo_root}/.venv}

mkdir -p "${out_dir}/model-store" "${out_dir}/config"
if [[ -n "$mar" ]]; then
    [[ -f "$mar" ]] || fail "no archive at ${mar}"
    cp "$mar" "${out_dir}/model-store/${model_name}.mar"
else
    MODEL_STORE="${out_dir}/model-store" VENV="$venv" \
        "${repo_root}/scripts/archive.sh" "$export_dir" "$model_name"
fi

# v1: KServe's request envelope reads only the first request of a batch, so the archive gets
# batchSize 1, and it wraps the handler's answers, so they go to TorchServe as objects
# (handler.compact_explanations false); its model-config.yaml is rewritten in place,
# everything else is kept.
# v2: the handler answers the Open Inference Protocol itself, so no envelope and the
# archive's batching stays; envvars config is turned off so that the runtime's
# TS_SERVICE_ENVELOPE=kservev2 cannot put the envelope back.
# model_snapshot takes the workers and timeouts from the archive's own file: they never disagree.
"${venv}/bin/python" - "${repo_root}/docker/kserve/config.properties" \
    "${out_dir}/model-store/${model_name}.mar" "$model_name" "$protocol" >"${out_dir}/config/config.properties" <<'PY'
import json
import os
import re
import sys
import zipfile

import yaml

template, mar_path, model_name, protocol = sys.argv[1:]
with zipfile.ZipFile(mar_path) as archive:
    entries = [(info, archive.read(info)) for info in archive.infolist()]
    manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
config_name = manifest["model"].get("configFile")
model_config = {}
with zipfile.ZipFile(mar_path + ".tmp", "w", zipfile.ZIP_DEFLATED) as archive:
    for info, data in entries:
        if info.filename == config_name:
            text = data.decode()
            if protocol == "v1":
                text = re.sub(r"(?m)^batchSize:\s*\d+", "batchSize: 1", text)
                text = re.sub(r"(?m)^[ \t]+compact_explanations:.*\n", "", text)
                objects = "  compact_explanations: false  # the kserve envelope wraps objects\n"
                if re.search(r"(?m)^handler:\s*$", text):
                    text = re.sub(r"(?m)^handler:\s*\n", "handler:\n" + objects, text, count=1)
                else:
                    text += "\nhandler:\n" + objects
            model_config = yaml.safe_load(text)
            data = text.encode()
        archive.writestr(info, data)
os.replace(mar_path + ".tmp", mar_path)

version = manifest["model"].get("modelVersion", "1.0")
snapshot = {
    "name": "startup.cfg",
    "modelCount": 1,
    "models": {
        model_name: {
            version: {
                "defaultVersion": True,
                "marName": f"{model_name}.mar",
                "minWorkers": model_config.get("minWorkers", 1),
                "maxWorkers": model_config.get("maxWorkers", 1),
                "batchSize": model_config.get("batchSize", 1),
                "maxBatchDelay": model_config.get("maxBatchDelay", 5),
                "responseTimeout": model_config.get("responseTimeout", 60),
            }
        }
    },
}
with open(template) as f:
    lines = f.read().splitlines()
if protocol == "v2":
    replaced = {"service_envelope", "enable_envvars_config"}
    lines = [line for line in lines if line.split("=", 1)[0].strip() not in replaced]
    lines += [
        "# --protocol v2: the handler answers the Open Inference Protocol; no envelope, and",
        "# no TS_* environment (the runtime sets TS_SERVICE_ENVELOPE=kservev2 for v2).",
        "enable_envvars_config=false",
    ]
print("\n".join(lines))
print(f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}")
PY
# The handler's metrics are declared here (config.properties: metrics_config).
cp "${repo_root}/monitoring/metrics.yaml" "${out_dir}/config/metrics.yaml"
printf 'make-storage: wrote %s/model-store/%s.mar and %s/config/{config.properties,metrics.yaml} (protocol %s)\n' \
    "$out_dir" "$model_name" "$out_dir" "$protocol"
