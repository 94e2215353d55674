#!/usr/bin/env bash
# The container's main process: TorchServe in the foreground, serving every archive in the
# model store (baked in at build time, or mounted over it at run time), or after an update
# (fashion-serve-rollout) only the version that was serving.
#   fashion-serve-entrypoint [extra torchserve arguments]
# Settings (environment variables, defaults from the Dockerfile):
#   MODEL_STORE=/home/model-server/model-store   folder with the .mar files
#   TS_RUN_DIR=/home/model-server/run            TorchServe writes key_file.json here
#   TS_CONFIG=/home/model-server/config.properties
#   TS_LOG_CONFIG=/home/model-server/log4j2.xml
#   MODEL_NAME=fashion-cnn                        the model fashion-serve-rollout swaps
#   ROLLOUT=fashion-serve-rollout                 scripts/rollout.py, as the image installs it
set -euo pipefail

model_store=${MODEL_STORE:-/home/model-server/model-store}
run_dir=${TS_RUN_DIR:-/home/model-server/run}
ts_config=${TS_CONFIG:-/home/model-server/config.properties}
log_config=${TS_LOG_CONFIG:-/home/model-server/log4j2.xml}
model_name=${MODEL_NAME:-fashion-cnn}
rollout=${ROLLOUT:-fashion-serve-rollout}

fail() { printf 'entrypoint: %s\n' "$*" >&2; exit 1; }

shopt -s nullglob
archives=("${model_store}"/*.mar)
[[ ${#archives[@]} -gt 0 ]] ||
    fail "no .mar in ${model_store}: build with an export dir (docker/build.sh) or mount a model store there"
mkdir -p "$run_dir" "${TMPDIR:-/tmp}" "${LOG_LOCATION:-/tmp}" ||
    fail "cannot create ${run_dir}: a mounted run dir must be writable by uid 1000"

# After fashion-serve-rollout update/rollback, RUN_DIR/versions.json names the archive of
# the version last made default: a restarted container serves that one again.
models=all
if command -v "$rollout" >/dev/null; then
    serving=$("$rollout" serving-mar --run-dir "$run_dir" --model-store "$model_store" \
        --model "$model_name") || serving=""
    [[ -z "$serving" ]] || models="${model_name}=${serving}"
fi

# TorchServe writes key_file.json (the API tokens) into its working directory: the run
# dir, where the healthcheck and the operator (a mounted volume) read it.
cd "$run_dir"
rm -f key_file.json
printf 'entrypoint: serving %s from %s; tokens in %s/key_file.json\n' \
    "$([[ "$models" == all ]] && echo "${archives[*]##*/}" || echo "${models#*=}")" \
    "$model_store" "$run_dir"
exec torchserve --foreground \
    --ts-config "$ts_config" \
    --log-config "$log_config" \
    --model-store "$model_store" \
    --models "$models" \
    "$@"
