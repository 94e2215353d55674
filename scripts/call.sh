#!/usr/bin/env bash
# POST one image to the running server (scripts/serve.sh) with the inference token, as
# `curl -T FILE` does; options go as headers, since TorchServe 0.12 drops query strings:
#   scripts/call.sh predictions|explanations FILE [HEADER...]     e.g. 'X-Topk: 3'
# predict.sh and explain.sh are the friendly front ends. Settings: RUN_DIR=run (where
# serve.sh wrote endpoints.json and key_file.json), VENV=.venv (the Python that runs
# scripts/client.py, which reads those files).
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${RUN_DIR:-${repo_root}/run}
python=${VENV:-${repo_root}/.venv}/bin/python

usage="usage: scripts/call.sh predictions|explanations FILE [HEADER...]"
[[ $# -ge 2 && ( "$1" == predictions || "$1" == explanations ) ]] || { echo "$usage" >&2; exit 2; }
endpoint=$1
file=$2
shift 2
[[ -f "$file" ]] || { echo "no such file: $file" >&2; exit 2; }

[[ -x "$python" ]] || { echo "no ${python}: run scripts/setup.sh" >&2; exit 1; }
client=("$python" "${repo_root}/scripts/client.py")
url=$("${client[@]}" url "$endpoint" --run-dir "$run_dir") || exit 1
token=$("${client[@]}" token --run-dir "$run_dir") || exit 1

args=(--silent --show-error --fail-with-body --upload-file "$file")
[[ -z "$token" ]] || args+=(--header "Authorization: Bearer ${token}")  # empty: auth is off
for header in "$@"; do
    args+=(--header "$header")
done
curl "${args[@]}" "$url"
echo
