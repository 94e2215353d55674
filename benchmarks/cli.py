"""What every benchmark command shares: its command line, and the handler and
config.properties variants it archives without editing the repository."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml

from tests.support.servers import REPO_ROOT

DEFAULT_EXPORT_DIR = REPO_ROOT / "artifacts" / "export"
DEFAULT_IMAGE = REPO_ROOT / "samples" / "ankle_boot.png"  # the request both scripts send


def command_line(doc: str) -> argparse.ArgumentParser:
    """A parser for a benchmark command: its docstring's first paragraph as the description,
    and the served model and request image every command takes."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--export-dir",
        type=Path,
        default=DEFAULT_EXPORT_DIR,
        help="model.pt (default artifacts/export)",
    )
    parser.add_argument(
        "--image",
        type=Path,
        default=DEFAULT_IMAGE,
        help="the PNG a good request sends (default samples/ankle_boot.png)",
    )
    return parser


def handler_dir_with(overrides: dict, work_dir: Path) -> Path:
    """A copy of handler/ whose model-config.yaml has `overrides` (top-level keys, or
    `handler.<key>`) applied: how a tuning variant is archived without editing the repo.
    The key `handler_source` names another handler folder to copy (a candidate change)."""
    overrides = dict(overrides)
    source = Path(overrides.pop("handler_source", REPO_ROOT / "handler"))
    target = work_dir / "handler"
    shutil.rmtree(target, ignore_errors=True)
    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(source, target, ignore=ignore)
    config_path = target / "model-config.yaml"
    config = yaml.safe_load(config_path.read_text())
    for key, value in overrides.items():
        if key.startswith("handler."):
            config.setdefault("handler", {})[key.split(".", 1)[1]] = value
        else:
            config[key] = value
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def config_with(keys: dict, work_dir: Path) -> Path:
    """A copy of config.properties with `keys` replaced or added."""
    lines = (REPO_ROOT / "config.properties").read_text().splitlines()
    kept = [line for line in lines if line.split("=", 1)[0].strip() not in keys]
    path = work_dir / "config.properties"
    path.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in keys.items())]) + "\n")
    return path


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
