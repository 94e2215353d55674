#!/usr/bin/env bash
# Build the serving image from an exported model, in one command:
#   docker/build.sh [cpu|gpu] [--tag TAG] [--export-dir DIR | --no-model] [--wheelhouse DIR]
#                   [--base-image IMAGE] [-- extra build-tool arguments]
#   cpu (default)  BASE_IMAGE debian:bookworm-slim, CPU torch      -> fashion-serve:cpu
#   gpu            BASE_IMAGE nvidia/cuda:12.8.1-base-ubuntu24.04, CUDA torch -> fashion-serve:gpu
#   --export-dir   model.pt, its contract inside (default artifacts/export); the build packs
#                  it with scripts/archive.sh. --no-model: mount a model store at run time.
#   --wheelhouse   wheels for an offline build (pip --no-index), made on the host with e.g.
#                  pip download -d wheelhouse -r docker/torch.txt -r docker/requirements.txt
# Settings (environment variables):
#   CONTAINER_ENGINE   docker, podman or buildah, with global options (default: docker if
#                      its daemon answers, else podman, else buildah)
#   TORCH_VERSION (default: the pin in docker/torch.txt)
#   TORCH_INDEX_URL (default: cpu: the CPU index in docker/torch.txt; gpu: PyTorch's cu128)
#   MODEL_NAME=fashion-cnn
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)

fail() { printf 'build: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

target=cpu
tag=
export_dir=${repo_root}/artifacts/export
wheelhouse=
base_image=
extra_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        cpu | gpu) target=$1 ;;
        --tag) tag=${2:?--tag needs a value}; shift ;;
        --export-dir) export_dir=${2:?--export-dir needs a value}; shift ;;
        --no-model) export_dir= ;;
        --wheelhouse) wheelhouse=${2:?--wheelhouse needs a value}; shift ;;
        --base-image) base_image=${2:?--base-image needs a value}; shift ;;
        -h | --help) usage 0 ;;
        --) shift; extra_args=("$@"); break ;;
        *) printf 'build: unknown argument %q\n' "$1" >&2; usage 2 >&2 ;;
    esac
    shift
done

case "$target" in
    cpu)
        default_base=debian:bookworm-slim
        # PyTorch's CPU index, named beside the pin in docker/torch.txt.
        index_line=$(grep -m1 -E '^--extra-index-url[= ]' "${repo_root}/docker/torch.txt") ||
            fail "no '--extra-index-url URL' line in ${repo_root}/docker/torch.txt"
        default_index=${index_line#--extra-index-url[= ]} ;;
    gpu)
        # The "base" flavour: CUDA's env vars and libcudart only; the torch wheel brings
        # the CUDA libraries it was built with.
        default_base=nvidia/cuda:12.8.1-base-ubuntu24.04
        default_index=https://download.pytorch.org/whl/cu128 ;;
esac
base_image=${base_image:-$default_base}
tag=${tag:-fashion-serve:${target}}
model_name=${MODEL_NAME:-fashion-cnn}
if [[ -z "${TORCH_VERSION:-}" ]]; then
    pin=$(grep -m1 -E '^torch==[0-9]' "${repo_root}/docker/torch.txt") ||
        fail "no 'torch==VERSION' line in ${repo_root}/docker/torch.txt"
    TORCH_VERSION=${pin#torch==}
fi

if [[ -n "$export_dir" ]]; then
    [[ -f "${export_dir}/model.pt" ]] ||
        fail "no model.pt in ${export_dir}: run 'python -m training export' first, or pass --no-model"
fi
if [[ -n "$wheelhouse" ]]; then
    compgen -G "${wheelhouse}/*.whl" >/dev/null || fail "no wheels in ${wheelhouse}"
fi

# shellcheck source=SCRIPTDIR/engine.sh
source "${repo_root}/docker/engine.sh"
pick_container_engine podman buildah || exit 1
case "$(basename "${engine[0]}")" in
    docker) build_cmd=(build) ;;
    podman) build_cmd=(build --format docker) ;;
    # One layer on top of the base: vfs storage copies the whole tree for every cached layer.
    buildah) build_cmd=(bud --format docker --layers=false) ;;
    *) fail "unknown CONTAINER_ENGINE ${engine[0]}: use docker, podman or buildah" ;;
esac

# A small build context: only what the Dockerfile copies (the repo root holds .venv).
context=$(mktemp -d "${TMPDIR:-/tmp}/fashion-serve-context.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "${context}/docker" "${context}/scripts" "${context}/handler/fashion_serve" \
    "${context}/export" "${context}/wheelhouse" "${context}/monitoring"
cp "${repo_root}/monitoring/metrics.yaml" "${context}/monitoring/"
cp "${repo_root}"/docker/{Dockerfile,requirements.txt,entrypoint.sh,healthcheck.py,config.properties,log4j2.xml} \
    "${context}/docker/"
cp "${repo_root}"/scripts/{archive.sh,rollout.py,management_api.py} "${context}/scripts/"
cp "${repo_root}"/handler/*.py "${repo_root}/handler/model-config.yaml" "${context}/handler/"
# The serving package's sources only (no __pycache__): the archive and the image's copy.
cp "${repo_root}"/handler/fashion_serve/*.py "${context}/handler/fashion_serve/"
if [[ -n "$export_dir" ]]; then
    cp "${export_dir}/model.pt" "${context}/export/"
fi
if [[ -n "$wheelhouse" ]]; then
    # Hard links where the wheelhouse shares a filesystem with TMPDIR: no copy of ~300 MB.
    cp -l "${wheelhouse}"/*.whl "${context}/wheelhouse/" 2>/dev/null ||
        cp "${wheelhouse}"/*.whl "${context}/wheelhouse/"
fi

printf 'build: %s image %s (base %s, torch %s from %s, model %s) with %s\n' \
    "$target" "$tag" "$base_image" "$TORCH_VERSION" \
    "${wheelhouse:-${TORCH_INDEX_URL:-$default_index}}" "${export_dir:-none}" "${engine[*]}"
"${engine[@]}" "${build_cmd[@]}" \
    --file "${context}/docker/Dockerfile" \
    --tag "$tag" \
    --build-arg "BASE_IMAGE=${base_image}" \
    --build-arg "TORCH_VERSION=${TORCH_VERSION}" \
    --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-$default_index}" \
    --build-arg "MODEL_NAME=${model_name}" \
    "${extra_args[@]}" \
    "$context"
printf 'build: done: %s\n' "$tag"
