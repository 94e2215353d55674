#!/usr/bin/env bash
# Pack an exported model into a TorchServe archive: model_store/<MODEL_NAME>.mar
#   scripts/archive.sh [EXPORT_DIR] [MODEL_NAME]
#   EXPORT_DIR  default artifacts/export (model.pt from `python -m training export`)
#   MODEL_NAME  default fashion-cnn
# Settings (environment variables):
#   MODEL_STORE=model_store   where the .mar is written (overwritten if present)
#   VENV=.venv                the environment that has torch-model-archiver
#   HANDLER_DIR=handler       fashion_handler.py, the fashion_serve package and model-config.yaml
# The archive holds: model.pt (TorchScript with its contract), handler/fashion_handler.py as
# the handler, the fashion_serve package folder beside it, and
# handler/model-config.yaml (workers, batching, timeouts, handler settings). Both runtimes
# load this one archive (the KServe runtime reads model.pt and model-config.yaml from it).
# Its version is the model contract's version (contract.json inside model.pt).
# The config's handler: section is checked first by fashion_serve.settings, the same
# code that reads it in the worker: a setting the worker would refuse fails the archive here.
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)

export_dir=${1:-${repo_root}/artifacts/export}
model_name=${2:-fashion-cnn}
model_store=${MODEL_STORE:-${repo_root}/model_store}
venv=${VENV:-${repo_root}/.venv}
handler_dir=${HANDLER_DIR:-${repo_root}/handler}

fail() { printf 'archive: %s\n' "$*" >&2; exit 1; }

[[ -f "${export_dir}/model.pt" ]] ||
    fail "no model at ${export_dir}/model.pt: export one with 'python -m training export --checkpoint artifacts/train/best.pt --out ${export_dir}'"
[[ -f "${handler_dir}/fashion_handler.py" ]] || fail "no handler at ${handler_dir}/fashion_handler.py"
[[ -d "${handler_dir}/fashion_serve" ]] || fail "no serving core at ${handler_dir}/fashion_serve"
[[ -f "${handler_dir}/model-config.yaml" ]] || fail "no ${handler_dir}/model-config.yaml"
[[ -x "${venv}/bin/torch-model-archiver" ]] || fail "torch-model-archiver not in ${venv}: run scripts/setup.sh"
PYTHONPATH="${handler_dir}" "${venv}/bin/python" -m fashion_serve.settings "${handler_dir}/model-config.yaml" ||
    fail "${handler_dir}/model-config.yaml: fix the handler: section (see above); no archive written"

# The archiver copies a folder's contents into the archive root, where the worker imports
# them: stage the serving core there as the package folder it is, without bytecode.
stage=$(mktemp -d "${TMPDIR:-/tmp}/fashion-archive.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir "${stage}/fashion_serve"
cp "${handler_dir}"/fashion_serve/*.py "${stage}/fashion_serve/"

# contract.json is stored in model.pt (a zip) under <archive>/extra/; no torch load needed.
version=$("${venv}/bin/python" - "${export_dir}/model.pt" <<'PY'
import json, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive:
    name = next((n for n in archive.namelist() if n.endswith("/extra/contract.json")), None)
    print(json.loads(archive.read(name))["version"] if name else "")
PY
)
[[ -n "$version" ]] || fail "${export_dir}/model.pt holds no contract.json: re-export it with 'python -m training export'"

mkdir -p "$model_store"
"${venv}/bin/torch-model-archiver" \
    --model-name "$model_name" \
    --version "$version" \
    --serialized-file "${export_dir}/model.pt" \
    --handler "${handler_dir}/fashion_handler.py" \
    --extra-files "$stage" \
    --config-file "${handler_dir}/model-config.yaml" \
    --export-path "$model_store" \
    --force
printf 'archive: wrote %s/%s.mar (model version %s)\n' "$model_store" "$model_name" "$version"
