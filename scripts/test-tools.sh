#!/usr/bin/env bash
# Install the system tools some tests use, where apt is usable without a password:
# the real FashionMNIST, wrk, Prometheus (server and promtool: the monitoring tests), and
# buildah/podman for the container smoke test.
# Tests whose tools are missing skip and say why.
set -euo pipefail

packages=(dataset-fashion-mnist wrk prometheus buildah podman runc debootstrap)
command -v apt-get >/dev/null || { echo "test-tools: no apt-get; skipping ${packages[*]}"; exit 0; }
sudo=()
[[ $(id -u) -ne 0 ]] && sudo=(sudo -n)
if ! "${sudo[@]}" true 2>/dev/null; then
    echo "test-tools: apt needs a password here; skipping ${packages[*]}"
    exit 0
fi
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "test-tools: ${packages[*]} already installed"
    exit 0
fi
echo "test-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null ||
    { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; } ||
    echo "test-tools: apt could not install ${missing[*]}; the tests that need them will skip"
