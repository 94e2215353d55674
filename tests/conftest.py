"""Shared fixtures. Models are exported by the project's own export code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fashion_serve.contract import FASHION_MNIST_CLASSES, ModelContract
from training import data
from training.__main__ import main as training_main
from training.export import export_model
from training.model import FashionCNN, ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_contract(**overrides) -> ModelContract:
    fields = dict(
        name="fashion-cnn",
        version="0.0-test",
        class_names=FASHION_MNIST_CLASSES,
        input_shape=(1, 28, 28),
        mean=(0.2860,),
        std=(0.3530,),
        test_accuracy=None,
    )
    fields.update(overrides)
    return ModelContract(**fields)


@pytest.fixture(scope="session")
def tiny_export_dir(tmp_path_factory) -> Path:
    """An untrained (seeded) FashionCNN exported with a contract: model.pt.

    Right for shapes, formats and plumbing; its predictions mean nothing.
    """
    torch.manual_seed(0)
    out_dir = tmp_path_factory.mktemp("tiny_export")
    export_model(FashionCNN(ModelConfig()), make_contract(), out_dir, torch.randn(4, 1, 28, 28))
    return out_dir


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    """A model trained briefly on the real FashionMNIST and exported (~1 min on 2 cores).

    FASHION_EXPORT_DIR=artifacts/export reuses an existing export instead (quicker locally).
    Skips where the real data is not on this machine.
    """
    existing = os.environ.get("FASHION_EXPORT_DIR")
    if existing:
        return Path(existing)
    if data.find_data_dir() is None:
        pytest.skip(
            "real FashionMNIST not found: run scripts/test-tools.sh or set FASHION_MNIST_DIR"
        )
    work = tmp_path_factory.mktemp("real_model")
    train_args = ["train", "--out", str(work / "train"), "--epochs", "1", "--no-download"]
    assert training_main(train_args) == 0
    export_args = ["export", "--checkpoint", str(work / "train" / "best.pt")]
    assert training_main([*export_args, "--out", str(work / "export"), "--no-download"]) == 0
    return work / "export"
