#!/usr/bin/env bash
# Run the serving image, reachable from this machine only unless told otherwise:
#   docker/run.sh [cpu|gpu] [--image IMAGE] [--name NAME] [--bind ADDR] [--port PORT]
#                 [--management-port PORT] [--metrics-port PORT] [--model-store DIR]
#                 [--run-dir DIR] [--detach] [-- extra run arguments]
#   cpu (default) / gpu   image fashion-serve:cpu / fashion-serve:gpu; gpu adds the GPUs
#   --bind 127.0.0.1      host address the ports are published on (0.0.0.0: every interface)
#   --port 8080           inference API; --metrics-port 8082 (Prometheus, no token)
#   --management-port     management API; NOT published unless given
#   --model-store DIR     serve the .mar files in DIR instead of the image's (mounted read-only)
#   --run-dir DIR         host folder for key_file.json (default: the named volume
#                         NAME-run); it must be writable by uid 1000
# Settings (environment variables): CONTAINER_ENGINE (docker or podman, with global
# options; default docker if its daemon answers, else podman).
# The API tokens: <engine> exec NAME cat /home/model-server/run/key_file.json
set -euo pipefail

fail() { printf 'run: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

target=cpu
image=
name=fashion-serve
bind=127.0.0.1
port=8080
management_port=
metrics_port=8082
model_store=
run_dir=
detach=()
extra_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        cpu | gpu) target=$1 ;;
        --image) image=${2:?--image needs a value}; shift ;;
        --name) name=${2:?--name needs a value}; shift ;;
        --bind) bind=${2:?--bind needs a value}; shift ;;
        --port) port=${2:?--port needs a value}; shift ;;
        --management-port) management_port=${2:?--management-port needs a value}; shift ;;
        --metrics-port) metrics_port=${2:?--metrics-port needs a value}; shift ;;
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

# shellcheck source=SCRIPTDIR/engine.sh
source "$(dirname "$0")/engine.sh"
pick_container_engine podman || exit 1

args=(run --rm --name "$name" "${detach[@]}"
    --publish "${bind}:${port}:8080"
    --publish "${bind}:${metrics_port}:8082"
    # Non-root already; drop what the server never needs.
    --cap-drop ALL --security-opt no-new-privileges
    # SIGTERM is handled (dumb-init -> TorchServe); give a slow worker time to finish.
    --stop-timeout 30)
[[ -n "$management_port" ]] && args+=(--publish "${bind}:${management_port}:8081")
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

printf 'run: %s on %s:%s (inference), %s:%s (metrics)%s\n' "$image" "$bind" "$port" \
    "$bind" "$metrics_port" "${management_port:+, ${bind}:${management_port} (management)}"
printf 'run: tokens: %s exec %s cat /home/model-server/run/key_file.json\n' "${engine[*]}" "$name"
exec "${engine[@]}" "${args[@]}" "${extra_args[@]}" "$image"
