#!/usr/bin/env bash
# Fill build/gpu-bundle/ with what the GPU machine lacks for `python -m benchmarks.gpu_proof`:
#   benchmarks/gpu_bundle.sh
# The GPU machine has torch, numpy, pillow, pyyaml, requests and pytest, but no TorchServe,
# captum, tqdm, psutil or matplotlib, no internet, and takes at most 64 MiB of carried files
# a run. So:
#   site/    ts (TorchServe's Python side, without its 46 MB frontend jar), captum, tqdm,
#            psutil (abi3 build, any Python 3) copied from this venv
#   wheels/  matplotlib and its dependencies, built for the GPU machine's Python: captum
#            imports matplotlib when `captum.attr` is imported. Kept as wheels (zip files,
#            17 MB, 56 MB unpacked); gpu_proof --bundle unpacks them in a temp folder.
#   export/  the exported model (model.pt + index_to_name.json)
#   data/    the four gzipped FashionMNIST IDX files
# Settings (environment variables):
#   VENV=.venv                     where the packages are taken from
#   EXPORT_DIR=artifacts/export    the model (python -m training export)
#   DATA_DIR=                      the IDX .gz files; default $FASHION_MNIST_DIR, else Debian's
#   BUNDLE=build/gpu-bundle        the folder written (replaced)
#   MAX_MIB=60                     fail above this size
#   GPU_PYTHON=3.12                the GPU machine's Python, for the compiled wheels
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
EXPORT_DIR=${EXPORT_DIR:-artifacts/export}
DATA_DIR=${DATA_DIR:-${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}}
BUNDLE=${BUNDLE:-build/gpu-bundle}
MAX_MIB=${MAX_MIB:-60}
GPU_PYTHON=${GPU_PYTHON:-3.12}
PACKAGES=(ts captum tqdm psutil)
# What `import captum.attr` pulls in (python -X importtime), at this venv's versions.
WHEELS=(matplotlib kiwisolver fonttools cycler pyparsing python-dateutil)
IDX_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

say() { printf 'gpu_bundle: %s\n' "$*"; }
fail() { printf 'gpu_bundle: FAILED: %s\n' "$*" >&2; exit 1; }

[[ -x "${VENV}/bin/python" ]] || fail "no venv at ${VENV}: run scripts/setup.sh first"
[[ -f "${EXPORT_DIR}/model.pt" ]] ||
    fail "no ${EXPORT_DIR}/model.pt: run python -m training train, then python -m training export"
for stem in "${IDX_FILES[@]}"; do
    [[ -f "${DATA_DIR}/${stem}.gz" ]] ||
        fail "no ${DATA_DIR}/${stem}.gz: set DATA_DIR to the folder with the four gzipped IDX files"
done

rm -rf "$BUNDLE"
mkdir -p "${BUNDLE}/site" "${BUNDLE}/wheels" "${BUNDLE}/export" "${BUNDLE}/data"

for package in "${PACKAGES[@]}"; do
    source_dir=$("${VENV}/bin/python" -c \
        "import importlib, os, sys; print(os.path.dirname(importlib.import_module(sys.argv[1]).__file__))" \
        "$package") || fail "${package} is not installed in ${VENV}: run scripts/setup.sh"
    cp -R "$source_dir" "${BUNDLE}/site/${package}"
done
# The frontend (Java) is not needed in-process, and alone it would nearly fill a run's 64 MiB.
rm -f "${BUNDLE}/site/ts/frontend/model-server.jar"
find "${BUNDLE}/site" -name __pycache__ -type d -prune -exec rm -rf {} +

pins=()
for wheel in "${WHEELS[@]}"; do
    version=$("${VENV}/bin/python" -c \
        "import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))" \
        "$wheel") || fail "${wheel} is not installed in ${VENV}: run EXTRAS=train scripts/setup.sh"
    pins+=("${wheel}==${version}")
done
say "downloading ${pins[*]} for Python ${GPU_PYTHON}"
"${VENV}/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --dest "${BUNDLE}/wheels" "${pins[@]}" ||
    fail "pip could not download ${pins[*]} for Python ${GPU_PYTHON}: check the package index"

cp "${EXPORT_DIR}"/model.pt "${EXPORT_DIR}"/*.json "${BUNDLE}/export/"
for stem in "${IDX_FILES[@]}"; do
    cp "${DATA_DIR}/${stem}.gz" "${BUNDLE}/data/"
done

size_bytes=$(du -sb "$BUNDLE" | cut -f1)
size_mib=$(awk -v b="$size_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
for part in site wheels export data; do
    say "$(du -sh "${BUNDLE}/${part}" | cut -f1)  ${BUNDLE}/${part}"
done
say "bundle ${BUNDLE}: ${size_mib} MiB (${size_bytes} bytes), limit ${MAX_MIB} MiB"
((size_bytes <= MAX_MIB * 1048576)) || fail "${BUNDLE} is ${size_mib} MiB, over ${MAX_MIB} MiB"
