"""A second model version to update to: the served export again, visibly changed (the e2e
update tests, the container smoke run and the reliability update check)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from fashion_serve.contract import load_torchscript, save_torchscript
from training.export import MODEL_FILE

BIAS_SHIFT = 2.0  # added to the first class's logit: the new version answers visibly otherwise


def next_version_export(export_dir: Path, out_dir: Path) -> str:
    """Write the served model again into out_dir as the next version (version + "-next"),
    with its last bias shifted; returns that version."""
    model, contract = load_torchscript(export_dir / MODEL_FILE)
    last_bias = [t for name, t in model.named_parameters() if name.endswith("bias")][-1]
    with torch.no_grad():
        last_bias[0] += BIAS_SHIFT
    new_contract = replace(contract, version=f"{contract.version}-next")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_torchscript(model, out_dir / MODEL_FILE, new_contract)
    return new_contract.version
