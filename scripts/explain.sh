#!/usr/bin/env bash
# Integrated-gradients explanation for one image from the running server; prints the JSON
# answer (attributions, heatmap_png as base64):
#   scripts/explain.sh FILE [TARGET]      TARGET: class index or name (default: predicted class)
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: scripts/explain.sh FILE [TARGET]" >&2; exit 2; }
exec "$(dirname "$0")/call.sh" explanations "$1" ${2:+"X-Target: $2"}
