"""Evaluate on the test set: accuracy, per-class accuracy, confusion matrix and learning curves.

python -m training evaluate --checkpoint artifacts/train/best.pt --out artifacts/train

Training writes metrics.json (with its peak memory); a later `evaluate` writes
evaluation.json beside it and leaves the training run's figures alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from fashion_serve.contract import FASHION_MNIST_CLASSES
from training.data import Split
from training.train import evaluate, normalize

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # written by `train`
EVALUATION_FILE = "evaluation.json"  # written by `evaluate`


def pyplot():
    """matplotlib.pyplot for writing files, or None where matplotlib is not installed.

    Imported here, not at the top: plots are a by-product, and a machine without
    matplotlib (a bare GPU host, a slim image) should still train and evaluate.
    """
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(
    labels: torch.Tensor, predicted: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(num_classes, num_classes) counts; rows are true classes, columns predictions."""
    flat = labels * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def plot_confusion(matrix: torch.Tensor, class_names: tuple[str, ...], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max().item() / 2
    for row, counts in enumerate(matrix.tolist()):
        for col, count in enumerate(counts):
            color = "white" if count > threshold else "black"
            ax.text(col, row, count, ha="center", va="center", fontsize=8, color=color)
    ax.set_title("FashionMNIST test set: confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(history: list[dict], path: Path) -> None:
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        acc_ax.plot(epochs, [row[f"{split}_accuracy"] for row in history], marker="o", label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss (train: with label smoothing)", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_checkpoint(model: torch.nn.Module, state: dict, test: Split, out_dir: Path) -> dict:
    """Test-set metrics of a checkpoint; writes confusion_matrix.png and learning_curves.png
    where matplotlib is installed."""
    x_test = normalize(test.images, state["mean"], state["std"])
    test_loss, test_accuracy, predicted = evaluate(model, x_test, test.labels)
    matrix = confusion_matrix(test.labels, predicted, len(FASHION_MNIST_CLASSES))
    per_class = [round(acc, 4) for acc in (matrix.diag() / matrix.sum(1).clamp(min=1)).tolist()]
    history = state["history"]
    metrics = dict(
        test_accuracy=round(test_accuracy, 4),
        test_loss=round(test_loss, 4),
        per_class_accuracy=dict(zip(FASHION_MNIST_CLASSES, per_class, strict=True)),
        epochs=len(history),
        best_epoch=state["epoch"],
        best_val_accuracy=round(state["val_accuracy"], 4),
        train_seconds=round(state["train_seconds"], 1),
        seconds_per_epoch=[round(row["seconds"], 3) for row in history],
        precision=state.get("precision"),  # None: a checkpoint from before it was recorded
        confusion_matrix=matrix.tolist(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    if pyplot() is None:
        log.warning("matplotlib is not installed: no confusion matrix or learning curves plots")
        return metrics
    plot_confusion(matrix, FASHION_MNIST_CLASSES, out_dir / "confusion_matrix.png")
    plot_learning_curves(history, out_dir / "learning_curves.png")
    return metrics


def write_metrics(metrics: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
