#!/usr/bin/env bash
# Pack an exported model into a TorchServe archive: model_store/<MODEL_NAME>.mar
#   scripts/archive.sh [EXPORT_DIR] [MODEL_NAME]
#   EXPORT_DIR  default artifacts/export (model.pt + index_to_name.json from `python -m training export`)
#   MODEL_NAME  default fashion-cnn
# Settings (environment variables):
#   MODEL_STORE=model_store   where the .mar is written (overwritten if present)
#   VENV=.venv                the environment that has torch-model-archiver
#   HANDLER_DIR=handler       handler module, helper modules and model-config.yaml
# The archive holds: model.pt (TorchScript with its contract), handler/fashion_handler.py as
# the handler, every other handler/*.py and index_to_name.json flat beside it, and
# handler/model-config.yaml (workers, batching, timeouts, handler settings).
# Its version is the model contract's version (contract.json inside model.pt).
# The config's handler: section is checked first by handler/fashion_settings.py, the same
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
[[ -f "${export_dir}/index_to_name.json" ]] ||
    fail "no ${export_dir}/index_to_name.json: re-run 'python -m training export'"
[[ -f "${handler_dir}/fashion_handler.py" ]] || fail "no handler at ${handler_dir}/fashion_handler.py"
[[ -f "${handler_dir}/model-config.yaml" ]] || fail "no ${handler_dir}/model-config.yaml"
[[ -x "${venv}/bin/torch-model-archiver" ]] || fail "torch-model-archiver not in ${venv}: run scripts/setup.sh"
"${venv}/bin/python" "${handler_dir}/fashion_settings.py" "${handler_dir}/model-config.yaml" ||
    fail "${handler_dir}/model-config.yaml: fix the handler: section (see above); no archive written"

# The handler's helper modules go flat into the archive root, where the worker imports them.
extra_files=("${export_dir}/index_to_name.json")
for module in "${handler_dir}"/*.py; do
    [[ "$(basename "$module")" == fashion_handler.py ]] || extra_files+=("$module")
done
extra_files_csv=$(IFS=,; echo "${extra_files[*]}")

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
    --extra-files "$extra_files_csv" \
    --config-file "${handler_dir}/model-config.yaml" \
    --export-path "$model_store" \
    --force
printf 'archive: wrote %s/%s.mar (model version %s)\n' "$model_store" "$model_name" "$version"
