#!/usr/bin/env bash
# Top-k classes for one image from the running server (started by scripts/serve.sh):
#   scripts/predict.sh FILE [TOPK]
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: scripts/predict.sh FILE [TOPK]" >&2; exit 2; }
exec "$(dirname "$0")/call.sh" predictions "$1" ${2:+"X-Topk: $2"}
