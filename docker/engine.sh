# shellcheck shell=bash
# Sourced by docker/build.sh and docker/run.sh (not run on its own): which container
# engine to drive.
#   pick_container_engine TOOL...
# sets the array `engine` to $CONTAINER_ENGINE split into words (a command with its
# global options), else docker if its daemon answers, else the first TOOL on PATH
# (build.sh: podman buildah; run.sh: podman). Returns 1, saying why, if none is found.

# shellcheck disable=SC2034  # `engine` is for the script that sources this file
pick_container_engine() {
    local candidate
    if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
        read -ra engine <<<"$CONTAINER_ENGINE"
        return 0
    fi
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        engine=(docker)
        return 0
    fi
    for candidate in "$@"; do
        if command -v "$candidate" >/dev/null; then
            engine=("$candidate")
            return 0
        fi
    done
    printf '%s: no docker daemon answers and none of [%s] is on PATH: install one, or set CONTAINER_ENGINE\n' \
        "$(basename "$0" .sh)" "$*" >&2
    return 1
}
