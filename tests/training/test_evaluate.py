"""Evaluation where matplotlib is missing (a bare GPU host): metrics, no plots, no crash."""

import json
import sys

import torch

from training.data import Split
from training.evaluate import evaluate_checkpoint, pyplot
from training.model import FashionCNN, ModelConfig


def test_without_matplotlib_metrics_are_written_and_plots_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    assert pyplot() is None
    torch.manual_seed(0)
    test = Split(torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8), torch.arange(20) % 10)
    history = [dict(epoch=1, train_loss=1.0, train_accuracy=0.5, val_loss=1.0,
                    val_accuracy=0.5, seconds=1.0)]  # fmt: skip
    state = dict(mean=0.3, std=0.35, history=history, epoch=1, val_accuracy=0.5,
                 train_seconds=1.0)  # fmt: skip

    metrics = evaluate_checkpoint(FashionCNN(ModelConfig()).eval(), state, test, tmp_path)

    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    json.dumps(metrics)  # ready for metrics.json / evaluation.json
    assert not list(tmp_path.glob("*.png"))
