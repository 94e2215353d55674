#!/usr/bin/env bash
# Run the serving image, reachable from this machine only unless told otherwise:
#   docker/run.sh [cpu|gpu] [--runtime torchserve|kserve] [--image IMAGE] [--name NAME]
#                 [--bind ADDR] [--port PORT] [--management-port PORT] [--metrics-port PORT]
#                 [--grpc-port PORT] [--model-store DIR] [--run-dir DIR] [--detach]
#                 [-- extra run arguments]
#   cpu (default) / gpu   image fashion-serve:cpu / fashion-serve:gpu; gpu adds the GPUs
#   --runtime torchserve  the server in the container (its RUNTIME); kserve: KServe's Python
#                         model server, with /metrics on --port and OIP gRPC on --grpc-port 7070
#   --bind 127.0.0.1      host address the ports are published on (0.0.0.0: every interface)
#   --port 8080           inference API; --metrics-port 8082 (Prometheus, no token; torchserve)
#   --management-port     management API (torchserve); NOT published unless given
#   --model-store DIR     serve the .mar files in DIR instead of the image's (mounted read-only)
#   --run-dir DIR         host folder for key_file.json (default: the named volume
#                         NAME-run); it must be writable by uid 1000
# Settings (environment variables): CONTAINER_ENGINE (docker or podman, with global
# options; default docker if its daemon answers, else podman).
# The API tokens: <engine> exec NAME cat /home/model-server/run/key_file.json
set -euo pipefail

fail() { printf 'run: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

target=cpu
runtime=torchserve
image=
name=fashion-serve
bind=127.0.0.1
port=8080
management_port=
metrics_port=8082
grpc_port=7070
model_store=
run_dir=
detach=()
extra_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        cpu | gpu) target=$1 ;;
        --runtime) runtime=${2:?--runtime needs torchserve or kserve}; shift ;;
        --image) image=${2:?--image needs a value}; shift ;;
        --name) name=${2:?--name needs a value}; shift ;;
        --bind) bind=${2:?--bind needs a value}; shift ;;
        --port) port=${2:?--port needs a value}; shift ;;
        --management-port) management_port=${2:?--management-port needs a value}; shift ;;
        --metrics-port) metrics_port=${2:?--metrics-port needs a value}; shift ;;
        --grpc-port) grpc_port=${2:?--grpc-port needs a value}; shift ;;
        --model-store) model_store=${2:?--model-store needs a value}; shift ;;
        --run-dir) run_dir=${2:?--run-dir needs a value}; shift ;;
        --detach | -d) detach=(--detach) ;;
        -h | --help) usage 0 ;;
        --) shift; extra_args=("$@"); break ;;
        *) printf 'run: unknown argument %q\n' "$1" >&2; usage 2 >&2 ;;
    esac
    shift
done
image=${image:-fashion-serve:${target}}
[[ "$runtime" == torchserve || "$runtime" == kserve ]] ||
    fail "unknown runtime '${runtime}': use torchserve or kserve"
[[ "$runtime" == torchserve || -z "$management_port" ]] ||
    fail "the kserve runtime has no management API: drop --management-port"

# shellcheck source=SCRIPTDIR/engine.sh
source "$(dirname "$0")/engine.sh"
pick_container_engine podman || exit 1

args=(run --rm --name "$name" "${detach[@]}"
    --env "RUNTIME=${runtime}"
    --publish "${bind}:${port}:8080"
    # Non-root already; drop what the server never needs.
    --cap-drop ALL --security-opt no-new-privileges
    # SIGTERM is handled (dumb-init -> the server); give a slow worker time to finish.
    --stop-timeout 30)
if [[ "$runtime" == kserve ]]; then
    args+=(--publish "${bind}:${grpc_port}:7070")  # /metrics is on the REST port
    # Each worker has a listening socket of its own: when one dies, connections waiting in
    # its accept queue move to a live one instead of being reset (Linux 5.14+; the
    # container's network namespace only; docs/reliability.md).
    if [[ -e /proc/sys/net/ipv4/tcp_migrate_req ]]; then
        args+=(--sysctl net.ipv4.tcp_migrate_req=1)
    fi
    published="${bind}:${port} (REST and metrics), ${bind}:${grpc_port} (OIP gRPC)"
else
    args+=(--publish "${bind}:${metrics_port}:8082")
    [[ -n "$management_port" ]] && args+=(--publish "${bind}:${management_port}:8081")
    published="${bind}:${port} (inference), ${bind}:${metrics_port} (metrics)${management_port:+, ${bind}:${management_port} (management)}"
fi
if [[ -n "$run_dir" ]]; then
    mkdir -p "$run_dir"
    args+=(--volume "$(cd "$run_dir" && pwd):/home/model-server/run")
else
    args+=(--volume "${name}-run:/home/model-server/run")
fi
if [[ -n "$model_store" ]]; then
    compgen -G "${model_store}/*.mar" >/dev/null || fail "no .mar files in ${model_store}"
    args+=(--volume "$(cd "$model_store" && pwd):/home/model-server/model-store:ro")
fi
if [[ "$target" == gpu ]]; then
    case "$(basename "${engine[0]}")" in
        podman) args+=(--device nvidia.com/gpu=all) ;;  # CDI (nvidia-ctk cdi generate)
        *) args+=(--gpus all) ;;                         # NVIDIA Container Toolkit
    esac
fi

printf 'run: %s (%s) on %s\n' "$image" "$runtime" "$published"
printf 'run: tokens: %s exec %s cat /home/model-server/run/key_file.json\n' "${engine[*]}" "$name"
exec "${engine[@]}" "${args[@]}" "${extra_args[@]}" "$image"
