"""scripts/archive.sh: what it refuses before packing a .mar."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import yaml

from fashion_serve.settings import HandlerSettings, settings_table

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLER_DIR = REPO_ROOT / "handler"


def archive(export_dir: Path, handler_dir: Path, model_store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HANDLER_DIR": str(handler_dir), "MODEL_STORE": str(model_store)}
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "archive.sh"), str(export_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_shipped_model_config_is_accepted_and_sets_the_defaults():
    config = yaml.safe_load((HANDLER_DIR / "model-config.yaml").read_text())
    # raises on an unknown key or a value below 1; the file names each key at its default,
    # so the one table of meanings (docs/deployment.md) also tells what is shipped
    assert HandlerSettings.from_model_yaml(config) == HandlerSettings()
    assert set(config["handler"]) == {item.name for item in fields(HandlerSettings)}


def test_the_settings_table_in_the_docs_is_the_one_the_code_makes():
    docs = (REPO_ROOT / "docs" / "deployment.md").read_text()
    start = docs.index("<!-- handler-settings: python -m fashion_serve.settings --table -->\n")
    end = docs.index("<!-- /handler-settings -->")
    generated = docs[start:end].split("\n", 1)[1]
    assert generated == settings_table(), "run: python -m fashion_serve.settings --table"


def test_archive_refuses_an_unknown_handler_setting_before_packing(tiny_export_dir, tmp_path):
    handler_dir = tmp_path / "handler"
    shutil.copytree(HANDLER_DIR, handler_dir, ignore=shutil.ignore_patterns("*.egg-info"))
    config_path = handler_dir / "model-config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["handler"]["ig_step"] = 20  # a typo of ig_steps
    config_path.write_text(yaml.safe_dump(config))

    done = archive(tiny_export_dir, handler_dir, tmp_path / "store")
    assert done.returncode != 0
    assert "ig_step" in done.stderr and "ig_steps" in done.stderr, done.stderr
    assert not (tmp_path / "store" / "fashion-cnn.mar").exists()
