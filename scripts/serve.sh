#!/usr/bin/env bash
# Start, stop or inspect a local server for the model store, and swap its model:
#   scripts/serve.sh start [--runtime torchserve|kserve] | stop | status
#   scripts/serve.sh update --export-dir DIR   archive DIR as the next version (its contract's
#                                              version) and swap to it without downtime
#   scripts/serve.sh rollback                  swap back to the version served before
# Two runtimes serve the same archive through the same core (docs/deployment.md):
# torchserve (the default: TorchServe 0.12, with update and rollback) or kserve (KServe's
# Python model server, fashion_serve.kserve_server: OIP gRPC that stock clients speak, no
# batching delay). stop and status act on whichever this run directory started.
# update and rollback run scripts/rollout.py (see its docstring for each step); the archives
# are kept in the model store as <MODEL_NAME>-<version>.mar, RUN_DIR/versions.json records
# which version serves, and `start` loads that one again after a stop.
# Everything the server writes (logs, pid file, key_file.json with the tokens, unpacked
# archives, worker sockets, the effective config) stays under one run directory.
# Settings (environment variables):
#   RUNTIME=torchserve          what `start` starts, unless --runtime says
#   RUN_DIR=run                 run directory (created; one server per run directory)
#   MODEL_STORE=model_store     folder holding the .mar files
#   MODEL_NAME=fashion-cnn      model whose worker must be READY before `start` returns
#   MODELS=<MODEL_NAME>=<MODEL_NAME>.mar   what to load (torchserve --models syntax; default:
#                               the version RUN_DIR/versions.json names, else <MODEL_NAME>.mar)
#   DRAIN_S=2                   update/rollback: wait after the old version's queue empties
#   INFERENCE_PORT=8080 MANAGEMENT_PORT=8081 METRICS_PORT=8082
#   GRPC_INFERENCE_PORT=7070 GRPC_MANAGEMENT_PORT=7071   (all bound to 127.0.0.1; the kserve
#                               runtime uses INFERENCE_PORT for REST and /metrics, and
#                               GRPC_INFERENCE_PORT)
#   DISABLE_TOKEN_AUTHORIZATION=false   kserve runtime: true only behind an authenticating
#                               ingress (TorchServe: disable_token_authorization in TS_CONFIG)
#   TS_CONFIG=config.properties base config; the ports above replace its addresses
#   LOG_CONFIG=log4j2.xml       log4j2 config (quiet: warnings, errors, lifecycle only)
#   METRICS_CONFIG=monitoring/metrics.yaml   metrics the handler may publish (metrics_config)
#   START_TIMEOUT=120           seconds to wait for a READY worker
#   OMP_NUM_THREADS=1           torch threads per worker (1 per worker suits 2 cores)
#   MODEL_LOG_LEVEL=info        worker log level in logs/model_log.log (warn: stderr only)
#   VENV=.venv                  environment with torchserve (its bin/java is used if present)
# After `start`, RUN_DIR/endpoints.json holds the URLs and RUN_DIR/key_file.json the tokens
# (scripts/client.py, predict.sh and explain.sh read both).
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)

abspath() { mkdir -p "$1" && (cd "$1" && pwd); }
run_dir=$(abspath "${RUN_DIR:-${repo_root}/run}")
model_store=${MODEL_STORE:-${repo_root}/model_store}
model_name=${MODEL_NAME:-fashion-cnn}
models=${MODELS:-}
inference_port=${INFERENCE_PORT:-8080}
management_port=${MANAGEMENT_PORT:-8081}
metrics_port=${METRICS_PORT:-8082}
grpc_inference_port=${GRPC_INFERENCE_PORT:-7070}
grpc_management_port=${GRPC_MANAGEMENT_PORT:-7071}
ts_config=${TS_CONFIG:-${repo_root}/config.properties}
log_config=${LOG_CONFIG:-${repo_root}/log4j2.xml}
metrics_config=${METRICS_CONFIG:-${repo_root}/monitoring/metrics.yaml}
start_timeout=${START_TIMEOUT:-120}
venv=${VENV:-${repo_root}/.venv}

# TorchServe keys its pid file on TMPDIR and unpacks archives under TEMP: both per run dir.
tmp_dir=${run_dir}/tmp
log_dir=${run_dir}/logs
pid_file=${tmp_dir}/.model_server.pid
key_file=${run_dir}/key_file.json
endpoints_file=${run_dir}/endpoints.json
python=${venv}/bin/python
rollout=("$python" "${repo_root}/scripts/rollout.py")
runtime_file=${run_dir}/runtime
kserve_pid_file=${run_dir}/kserve.pid

say() { printf 'serve: %s\n' "$*"; }
fail() { printf 'serve: %s\n' "$*" >&2; exit 1; }

running_runtime() {
    # The runtime this run directory last started (torchserve if none did).
    if [[ -f "$runtime_file" ]]; then cat "$runtime_file"; else echo torchserve; fi
}

server_pid() {
    # Prints the server's pid (TorchServe's frontend, or the kserve runtime's supervisor) if
    # its pid file names a live process.
    local pid file=$pid_file
    [[ "$(running_runtime)" == kserve ]] && file=$kserve_pid_file
    [[ -f "$file" ]] || return 1
    pid=$(<"$file")
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

show_log_tail() {
    local file
    for file in "${log_dir}/torchserve.out" "${log_dir}/ts_log.log" "${log_dir}/model_log.log" \
        "${log_dir}/kserve.log"; do
        [[ -s "$file" ]] || continue
        printf '\n--- last lines of %s ---\n' "$file" >&2
        tail -n 25 "$file" >&2
    done
}

# Prints the model's worker states, e.g. "READY", from the management API; fails if unreachable.
worker_status() {
    "$python" "${repo_root}/scripts/client.py" workers --run-dir "$run_dir" --model "$model_name"
}

write_run_config() {
    # The base config with this run's addresses, ports and metrics file (nothing else changes).
    grep -Ev '^[[:space:]]*(inference_address|management_address|metrics_address|grpc_inference_address|grpc_management_address|grpc_inference_port|grpc_management_port|model_store|load_models|metrics_config)[[:space:]]*=' \
        "$ts_config" >"${run_dir}/config.properties"
    cat >>"${run_dir}/config.properties" <<EOF

# --- set by scripts/serve.sh for this run ---
inference_address=http://127.0.0.1:${inference_port}
management_address=http://127.0.0.1:${management_port}
metrics_address=http://127.0.0.1:${metrics_port}
grpc_inference_address=127.0.0.1
grpc_management_address=127.0.0.1
grpc_inference_port=${grpc_inference_port}
grpc_management_port=${grpc_management_port}
metrics_config=${metrics_config}
EOF
    cat >"$endpoints_file" <<EOF
{
  "inference": "http://127.0.0.1:${inference_port}",
  "management": "http://127.0.0.1:${management_port}",
  "metrics": "http://127.0.0.1:${metrics_port}",
  "model": "${model_name}",
  "key_file": "${key_file}"
}
EOF
}

wait_until_ready() {
    # Returns once the model is READY; fails (stopping the server) if it exits or times out.
    local server=$1 deadline=$((SECONDS + start_timeout)) states=""
    while ((SECONDS < deadline)); do
        if ! server_pid >/dev/null; then
            show_log_tail
            fail "${server} exited during start-up (see ${log_dir})"
        fi
        if states=$(worker_status 2>/dev/null) && [[ " $states " == *" READY "* ]]; then
            return 0
        fi
        sleep 0.5
    done
    show_log_tail
    say "worker states: ${states:-unknown}; stopping the server"
    stop >/dev/null 2>&1 || true
    fail "model ${model_name} not READY after ${start_timeout}s (see ${log_dir})"
}

serving_mar() {
    # The archive to load: after an update, the version that was serving, not the first one.
    local serving
    serving=$("${rollout[@]}" serving-mar --run-dir "$run_dir" --model-store "$model_store" \
        --model "$model_name")
    echo "${serving:-${model_name}.mar}"
}

start() {
    local pid runtime=${RUNTIME:-torchserve}
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --runtime) runtime=${2:?--runtime needs torchserve or kserve}; shift ;;
            *) fail "unknown option for start: $1" ;;
        esac
        shift
    done
    [[ "$runtime" == torchserve || "$runtime" == kserve ]] ||
        fail "unknown runtime '${runtime}': use torchserve or kserve"
    if pid=$(server_pid); then
        say "already running (pid ${pid}, $(running_runtime)) in ${run_dir}; 'scripts/serve.sh stop' first to restart"
        return 0
    fi
    echo "$runtime" >"$runtime_file"
    "start_${runtime}"
}

start_torchserve() {
    [[ -x "${venv}/bin/torchserve" ]] || fail "torchserve not in ${venv}: run scripts/setup.sh"
    [[ -f "$ts_config" ]] || fail "no config at ${ts_config}"
    [[ -f "$metrics_config" ]] || fail "no metrics file at ${metrics_config}"
    metrics_config=$(cd "$(dirname "$metrics_config")" && pwd)/$(basename "$metrics_config")
    [[ -d "$model_store" ]] || fail "no model store at ${model_store}: run scripts/archive.sh"
    model_store=$(cd "$model_store" && pwd)
    [[ -n "$models" ]] || models=${model_name}=$(serving_mar)
    local mar=${models#*=}
    [[ "$models" == *"://"* || -e "${model_store}/${mar}" ]] ||
        fail "no ${model_store}/${mar}: run scripts/archive.sh"

    mkdir -p "$tmp_dir" "$log_dir"
    rm -f "$key_file"
    write_run_config

    # The key file is written to the current directory, so start from the run directory.
    # `torchserve --start` leaves java holding its stdout: send it to a file.
    say "starting TorchServe (logs in ${log_dir})"
    (
        cd "$run_dir"
        exec env PATH="${venv}/bin:${PATH}" TMPDIR="$tmp_dir" TEMP="$tmp_dir" \
            LOG_LOCATION="$log_dir" METRICS_LOCATION="$log_dir" \
            OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
            torchserve --start --ncs \
            --model-store "$model_store" \
            --models "$models" \
            --ts-config "${run_dir}/config.properties" \
            --log-config "$log_config"
    ) >"${log_dir}/torchserve.out" 2>&1 </dev/null || {
        show_log_tail
        fail "torchserve --start failed"
    }

    # /ping turns healthy before the worker has loaded the model: wait for READY instead.
    wait_until_ready TorchServe
    say "model ${model_name} is READY (pid $(server_pid))"
    say "inference:  http://127.0.0.1:${inference_port}/predictions/${model_name}"
    say "explain:    http://127.0.0.1:${inference_port}/explanations/${model_name}"
    say "management: http://127.0.0.1:${management_port}/models/${model_name}"
    say "metrics:    http://127.0.0.1:${metrics_port}/metrics"
    if [[ -f "$key_file" ]]; then
        say "tokens:     ${key_file} (send 'Authorization: Bearer <inference.key>')"
    else
        say "tokens:     none (token authorization is disabled in ${ts_config})"
    fi
    say "stop with:  ${RUN_DIR:+RUN_DIR=${run_dir} }scripts/serve.sh stop"
}

start_kserve() {
    local mar auth=()
    [[ -d "$model_store" ]] || fail "no model store at ${model_store}: run scripts/archive.sh"
    mar=${model_store}/$(serving_mar)
    [[ -f "$mar" ]] || fail "no ${mar}: run scripts/archive.sh"
    mkdir -p "$log_dir"
    rm -f "$key_file"
    [[ "${DISABLE_TOKEN_AUTHORIZATION:-false}" == true ]] && auth=(--disable-token-authorization)
    cat >"$endpoints_file" <<EOF
{
  "runtime": "kserve",
  "inference": "http://127.0.0.1:${inference_port}",
  "grpc": "127.0.0.1:${grpc_inference_port}",
  "metrics": "http://127.0.0.1:${inference_port}",
  "model": "${model_name}",
  "key_file": "${key_file}"
}
EOF
    say "starting the KServe runtime (logs in ${log_dir}/kserve.log)"
    (
        cd "$run_dir"
        exec env OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" LOG_LEVEL="${MODEL_LOG_LEVEL:-info}" \
            "$python" -m fashion_serve.kserve_server --archive "$mar" --run-dir "$run_dir" \
            --http-port "$inference_port" --grpc-port "$grpc_inference_port" "${auth[@]}"
    ) >"${log_dir}/kserve.log" 2>&1 </dev/null &
    echo $! >"$kserve_pid_file"

    wait_until_ready "the KServe runtime"
    say "model ${model_name} is READY (pid $(server_pid), runtime kserve)"
    say "inference:  http://127.0.0.1:${inference_port}/predictions/${model_name}"
    say "OIP:        http://127.0.0.1:${inference_port}/v2/models/${model_name}/infer, gRPC 127.0.0.1:${grpc_inference_port}"
    say "metrics:    http://127.0.0.1:${inference_port}/metrics"
    if [[ -f "$key_file" ]]; then
        say "tokens:     ${key_file} (send 'Authorization: Bearer <inference.key>')"
    else
        say "tokens:     none (DISABLE_TOKEN_AUTHORIZATION=true)"
    fi
    say "stop with:  ${RUN_DIR:+RUN_DIR=${run_dir} }scripts/serve.sh stop"
}

stop() {
    local pid leftover=() waited=0
    if ! pid=$(server_pid); then
        say "not running (no live server in ${run_dir})"
        rm -f "$pid_file" "$kserve_pid_file" "$key_file"
        return 0
    fi
    mapfile -t leftover < <(descendants "$pid")
    if [[ "$(running_runtime)" == kserve ]]; then
        kill -TERM "$pid" 2>/dev/null || true  # the supervisor stops its workers, then exits
    else
        (
            cd "$run_dir"
            exec env PATH="${venv}/bin:${PATH}" TMPDIR="$tmp_dir" TEMP="$tmp_dir" torchserve --stop
        ) >>"${log_dir}/torchserve.out" 2>&1 </dev/null || true
    fi
    while kill -0 "$pid" 2>/dev/null && ((waited < 30)); do
        sleep 1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid ${pid} still alive after ${waited}s: sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Workers normally exit with the frontend; make sure none of ours is left behind.
    for child in "${leftover[@]}"; do
        kill -0 "$child" 2>/dev/null && kill -KILL "$child" 2>/dev/null || true
    done
    rm -f "$pid_file" "$kserve_pid_file" "$key_file"
    say "stopped (pid ${pid})"
}

status() {
    local pid states
    if ! pid=$(server_pid); then
        say "not running (run dir ${run_dir})"
        return 3
    fi
    say "running (pid ${pid}, run dir ${run_dir})"
    if ! states=$(worker_status 2>/dev/null); then
        say "management API not answering for ${model_name}"
        return 1
    fi
    say "model ${model_name} workers: ${states:-none}"
    [[ "$(running_runtime)" == kserve ]] || "${rollout[@]}" status --run-dir "$run_dir" --model-store "$model_store" --model "$model_name" |
        sed 's/^rollout: /serve: /'
    [[ " $states " == *" READY "* ]] || return 1
    "$python" "${repo_root}/scripts/client.py" endpoints --run-dir "$run_dir" | sed 's/^/serve: /'
}

swap() {
    # update --export-dir DIR | rollback: the running server swaps versions (scripts/rollout.py).
    local command=$1 export_dir="" staging
    shift
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --export-dir) export_dir=${2:?--export-dir needs a directory}; shift ;;
            *) fail "unknown option for ${command}: $1" ;;
        esac
        shift
    done
    server_pid >/dev/null || fail "not running in ${run_dir}: 'scripts/serve.sh start' first"
    [[ "$(running_runtime)" == torchserve ]] ||
        fail "${command} needs the torchserve runtime; the kserve runtime serves one version (stop, archive, start)"
    local args=(--run-dir "$run_dir" --model-store "$model_store" --model "$model_name"
        --drain-s "${DRAIN_S:-2}" --timeout-s "$start_timeout")
    if [[ "$command" == rollback ]]; then
        "${rollout[@]}" rollback "${args[@]}"
        return
    fi
    [[ -n "$export_dir" ]] || fail "usage: scripts/serve.sh update --export-dir DIR"
    # Archived aside first: the store only ever holds whole archives, named by version.
    staging=${run_dir}/staging
    rm -rf "$staging"
    MODEL_STORE="$staging" VENV="$venv" "${repo_root}/scripts/archive.sh" "$export_dir" "$model_name"
    "${rollout[@]}" update --archive "${staging}/${model_name}.mar" "${args[@]}"
    rm -rf "$staging"
}

case "${1:-}" in
start) shift; start "$@" ;;
stop) stop ;;
status) status ;;
update | rollback) swap "$@" ;;
*) fail "usage: scripts/serve.sh start [--runtime torchserve|kserve]|stop|status|update --export-dir DIR|rollback (settings: see the header of $0)" ;;
esac
