#!/usr/bin/env bash
# Top-k classes for one image from the running server (started by scripts/serve.sh):
#   scripts/predict.sh FILE [TOPK]
# Settings: RUN_DIR=run (where serve.sh wrote endpoints.json and key_file.json).
# Options travel as multipart fields: TorchServe 0.12 does not pass query parameters on.
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${RUN_DIR:-${repo_root}/run}

[[ $# -ge 1 && -f "$1" ]] || { echo "usage: scripts/predict.sh FILE [TOPK]" >&2; exit 2; }
file=$1
topk=${2:-}

# endpoints.json and key_file.json are JSON: read them with Python, no jq needed.
read -r url token < <(python3 - "$run_dir" <<'PY'
import json, pathlib, sys
run_dir = pathlib.Path(sys.argv[1])
try:
    endpoints = json.loads((run_dir / "endpoints.json").read_text())
except FileNotFoundError:
    sys.exit(f"no {run_dir}/endpoints.json: start the server with scripts/serve.sh start")
try:
    token = json.loads((run_dir / "key_file.json").read_text())["inference"]["key"]
except FileNotFoundError:
    token = "-"  # token authorization disabled
print(f"{endpoints['inference']}/predictions/{endpoints['model']}", token)
PY
)
[[ -n "${url:-}" ]] || exit 1

args=(--silent --show-error --fail-with-body --request POST)
[[ "$token" == - ]] || args+=(--header "Authorization: Bearer ${token}")
if [[ -n "$topk" ]]; then
    args+=(--form "data=@${file}" --form "topk=${topk}")
else
    args+=(--header "Content-Type: application/octet-stream" --data-binary "@${file}")
fi
curl "${args[@]}" "$url"
echo
