"""Export a checkpoint as TorchScript with its contract, and prove it answers like eager.

python -m training export --checkpoint artifacts/train/best.pt --out artifacts/export
"""

from __future__ import annotations

from pathlib import Path

import torch

from fashion_serve.contract import (
    ModelContract,
    load_torchscript,
    quiet_jit,
    save_torchscript,
)
from training.model import FashionCNN

MODEL_FILE = "model.pt"
PARITY_TOLERANCE = 1e-5


class ParityError(RuntimeError):
    pass


def export_model(
    model: FashionCNN, contract: ModelContract, out_dir: Path, example_batch: torch.Tensor
) -> float:
    """Write model.pt (TorchScript with its contract inside) into out_dir.

    Reloads the written file and compares it with the eager model on example_batch
    (normalized, (B, C, H, W)); returns the max absolute logit difference and raises
    ParityError above PARITY_TOLERANCE.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    with quiet_jit():
        scripted = torch.jit.script(model)
    model_path = out_dir / MODEL_FILE
    save_torchscript(scripted, model_path, contract)

    reloaded, reloaded_contract = load_torchscript(model_path)
    if reloaded_contract != contract:
        raise ParityError(f"contract read back from {model_path} differs from the one written")
    with torch.inference_mode():
        max_diff = (model(example_batch) - reloaded(example_batch)).abs().max().item()
    if max_diff > PARITY_TOLERANCE:
        raise ParityError(
            f"TorchScript logits differ from eager by {max_diff:.3g} (> {PARITY_TOLERANCE:g})"
        )
    return max_diff
