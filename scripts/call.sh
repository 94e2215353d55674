#!/usr/bin/env bash
# POST one image to the running server (scripts/serve.sh) with the inference token, as
# `curl -T FILE` does; options go as headers, since TorchServe 0.12 drops query strings:
#   scripts/call.sh predictions|explanations FILE [HEADER...]     e.g. 'X-Topk: 3'
# predict.sh and explain.sh are the friendly front ends. Settings: RUN_DIR=run (where
# serve.sh wrote endpoints.json and key_file.json).
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${RUN_DIR:-${repo_root}/run}

usage="usage: scripts/call.sh predictions|explanations FILE [HEADER...]"
[[ $# -ge 2 && ( "$1" == predictions || "$1" == explanations ) ]] || { echo "$usage" >&2; exit 2; }
endpoint=$1
file=$2
shift 2
[[ -f "$file" ]] || { echo "no such file: $file" >&2; exit 2; }

# endpoints.json and key_file.json are JSON: read them with Python, no jq needed.
read -r url token < <(python3 - "$run_dir" "$endpoint" <<'PY'
import json, pathlib, sys
run_dir, endpoint = pathlib.Path(sys.argv[1]), sys.argv[2]
try:
    endpoints = json.loads((run_dir / "endpoints.json").read_text())
except FileNotFoundError:
    sys.exit(f"no {run_dir}/endpoints.json: start the server with scripts/serve.sh start")
try:
    token = json.loads((run_dir / "key_file.json").read_text())["inference"]["key"]
except FileNotFoundError:
    token = "-"  # token authorization disabled
print(f"{endpoints['inference']}/{endpoint}/{endpoints['model']}", token)
PY
)
[[ -n "${url:-}" ]] || exit 1

args=(--silent --show-error --fail-with-body --upload-file "$file")
[[ "$token" == - ]] || args+=(--header "Authorization: Bearer ${token}")
for header in "$@"; do
    args+=(--header "$header")
done
curl "${args[@]}" "$url"
echo
