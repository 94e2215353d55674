"""scripts/setup.sh --dry-run as a new user's machine runs it: pip configured for PyPI alone
(PIP_CONFIG_FILE=/dev/null, no PIP_* settings, so none of this machine's local wheels), and
what torch it says it would install, from where."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.docker.test_docker_files import pinned_cpu_index, pinned_torch_version

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.network

# setup: torch 2.13.0+cpu (CPU build: ...) from https://...whl
TORCH_LINE = re.compile(r"^setup: torch (\S+) \((CPU|CUDA) build[,:] ([^)]*)\) from (\S+)$", re.M)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pypi():
    if not answers("https://pypi.org/simple/torch/"):
        pytest.skip("PyPI cannot be reached from here")


def dry_run(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, VENV=str(tmp_path / "venv"), TMPDIR=str(tmp_path))
    env.update(settings)
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "setup.sh"), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # A dry run installs nothing: no VENV, and its throwaway venv is gone.
    assert not (tmp_path / "venv").exists()
    assert not list(tmp_path.glob("fashion-setup.*"))
    return result


def pypi_linux_x86_64() -> bool:
    return platform.system() == "Linux" and platform.machine() == "x86_64"


def assert_pypi_cuda_build_with_a_warning(result, cpu_index: str) -> None:
    (version, build, detail, url) = TORCH_LINE.search(result.stdout).groups()
    assert version == pinned_torch_version()  # no +cpu local label
    assert build == "CUDA"
    assert re.fullmatch(r"with \d+ NVIDIA/CUDA packages: \d+\.\d\d GB of wheels", detail)
    assert url.startswith("https://files.pythonhosted.org/")
    assert re.search(rf"/torch-{re.escape(version)}-cp\d+-cp\d+-manylinux_\S+_x86_64\.whl$", url)
    # The warning comes before the line that says what would be installed.
    warning = result.stdout.index("setup: WARNING: only the CUDA build")
    assert warning < result.stdout.index("setup: torch ")
    assert f"CPU index {cpu_index} could not be reached" in result.stdout


@pytest.mark.skipif(not pypi_linux_x86_64(), reason="PyPI's torch is a CUDA build on Linux x86_64")
def test_dry_run_without_the_cpu_index_warns_before_pypis_cuda_build(pypi, tmp_path):
    # A closed port on loopback: an index that cannot be reached, wherever the test runs.
    unreachable = "http://127.0.0.1:9/whl/cpu"
    result = dry_run(tmp_path, TORCH_CPU_INDEX_URL=unreachable)
    assert_pypi_cuda_build_with_a_warning(result, unreachable)


def test_dry_run_prefers_the_cpu_build_from_pytorchs_cpu_index(pypi, tmp_path, record_property):
    cpu_index = pinned_cpu_index()
    reachable = answers(f"{cpu_index.rstrip('/')}/torch/")
    branch = "cpu-index-reachable" if reachable else "cpu-index-unreachable"
    record_property("branch", branch)
    print(f"branch: {branch}")
    result = dry_run(tmp_path)
    if not reachable:
        # What a user without that index gets: PyPI's build, said plainly first.
        if pypi_linux_x86_64():
            assert_pypi_cuda_build_with_a_warning(result, cpu_index)
        return
    (version, build, detail, url) = TORCH_LINE.search(result.stdout).groups()
    assert version == f"{pinned_torch_version()}+cpu"
    assert build == "CPU"
    assert re.fullmatch(r"a \d+ MB wheel, its small dependencies aside", detail)
    assert "pytorch.org/" in url and "+cpu" in urllib.request.unquote(url)
    assert "WARNING" not in result.stdout


def test_setup_refuses_an_unknown_argument():
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "setup.sh"), "--dryrun"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "unknown argument '--dryrun'" in result.stderr and "--dry-run" in result.stderr
