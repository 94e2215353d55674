#!/usr/bin/env bash
# The container's main process: one model server in the foreground, chosen by RUNTIME.
#   torchserve (default)  TorchServe, serving every archive in the model store (baked in at
#                         build time, or mounted over it at run time), or after an update
#                         (fashion-serve-rollout) only the version that was serving.
#   kserve                KServe's Python model server over the same core
#                         (python -m fashion_serve.kserve_server), one archive: the version
#                         an update left serving, else the store's MODEL_NAME.mar, else its
#                         only .mar. REST (TorchServe's, KServe v1 and OIP v2 routes, and
#                         /metrics) on 8080, OIP gRPC on 7070.
#   fashion-serve-entrypoint [extra arguments for the chosen server]
# Settings (environment variables, defaults from the Dockerfile):
#   RUNTIME=torchserve                            or kserve
#   MODEL_STORE=/home/model-server/model-store   folder with the .mar files
#   TS_RUN_DIR=/home/model-server/run            the server writes key_file.json here
#   MODEL_NAME=fashion-cnn                        the model fashion-serve-rollout swaps
#   ROLLOUT=fashion-serve-rollout                 scripts/rollout.py, as the image installs it
#   torchserve only: TS_CONFIG=/home/model-server/config.properties,
#                    TS_LOG_CONFIG=/home/model-server/log4j2.xml, TS_* config overrides
#   kserve only:     DISABLE_TOKEN_AUTHORIZATION=true  no tokens (authentication at the ingress)
set -euo pipefail

runtime=${RUNTIME:-torchserve}
model_store=${MODEL_STORE:-/home/model-server/model-store}
run_dir=${TS_RUN_DIR:-/home/model-server/run}
ts_config=${TS_CONFIG:-/home/model-server/config.properties}
log_config=${TS_LOG_CONFIG:-/home/model-server/log4j2.xml}
model_name=${MODEL_NAME:-fashion-cnn}
rollout=${ROLLOUT:-fashion-serve-rollout}
# The KServe runtime's ports. HTTP on 8080 as TorchServe's inference API, so probes, Services
# and published ports stay the same across runtimes. gRPC on 7070, TorchServe's gRPC inference
# port, not KServe's usual 8081: in this image 8081 is TorchServe's management API, and a port
# number that means "management" under one runtime and "inference" under the other would turn
# a firewall rule or a `docker/run.sh --management-port` written for one into a hole in the other.
kserve_http_port=8080
kserve_grpc_port=7070

fail() { printf 'entrypoint: %s\n' "$*" >&2; exit 1; }

[[ "$runtime" == torchserve || "$runtime" == kserve ]] ||
    fail "RUNTIME=${runtime}: use torchserve (the default) or kserve"
shopt -s nullglob
archives=("${model_store}"/*.mar)
[[ ${#archives[@]} -gt 0 ]] ||
    fail "no .mar in ${model_store}: build with an export dir (docker/build.sh) or mount a model store there"
mkdir -p "$run_dir" "${TMPDIR:-/tmp}" "${LOG_LOCATION:-/tmp}" ||
    fail "cannot create ${run_dir}: a mounted run dir must be writable by uid 1000"

# After fashion-serve-rollout update/rollback, RUN_DIR/versions.json names the archive of
# the version last made default: a restarted container serves that one again.
serving=""
if command -v "$rollout" >/dev/null; then
    serving=$("$rollout" serving-mar --run-dir "$run_dir" --model-store "$model_store" \
        --model "$model_name") || serving=""
fi

# The server writes key_file.json (the API tokens) into the run dir, where the healthcheck
# and the operator (a mounted volume) read it; TorchServe writes it into its working directory.
cd "$run_dir"
rm -f key_file.json

if [[ "$runtime" == kserve ]]; then
    # One archive: the KServe runtime serves one version (no management API to swap it).
    if [[ -n "$serving" ]]; then
        archive=${model_store}/${serving}
    elif [[ -f "${model_store}/${model_name}.mar" ]]; then
        archive=${model_store}/${model_name}.mar
    elif [[ ${#archives[@]} -eq 1 ]]; then
        archive=${archives[0]}
    else
        fail "${#archives[@]} archives in ${model_store} and none is ${model_name}.mar: set MODEL_NAME or keep one .mar there"
    fi
    auth=()
    token_note="tokens in ${run_dir}/key_file.json"
    if [[ "${DISABLE_TOKEN_AUTHORIZATION:-false}" == true ]]; then
        auth=(--disable-token-authorization)
        token_note="token authorization OFF (DISABLE_TOKEN_AUTHORIZATION=true)"
    fi
    printf 'entrypoint: KServe runtime serving %s; HTTP :%s, gRPC :%s; %s\n' \
        "${archive##*/}" "$kserve_http_port" "$kserve_grpc_port" "$token_note"
    # 0.0.0.0: inside the container that is the container's own network, as in
    # config.properties; who reaches it is decided by port publishing or a Kubernetes Service.
    exec python -m fashion_serve.kserve_server \
        --archive "$archive" \
        --run-dir "$run_dir" \
        --host 0.0.0.0 \
        --http-port "$kserve_http_port" \
        --grpc-port "$kserve_grpc_port" \
        "${auth[@]}" \
        "$@"
fi

models=all
[[ -z "$serving" ]] || models="${model_name}=${serving}"
printf 'entrypoint: TorchServe serving %s from %s; tokens in %s/key_file.json\n' \
    "$([[ "$models" == all ]] && echo "${archives[*]##*/}" || echo "${models#*=}")" \
    "$model_store" "$run_dir"
exec torchserve --foreground \
    --ts-config "$ts_config" \
    --log-config "$log_config" \
    --model-store "$model_store" \
    --models "$models" \
    "$@"
