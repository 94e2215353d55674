"""Command line for the training stage.

python -m training train --out artifacts/train          # full recipe, 25 epochs
python -m training train --epochs 2 --out artifacts/train  # short recipe
python -m training evaluate --checkpoint artifacts/train/best.pt  # writes evaluation.json
python -m training export --checkpoint artifacts/train/best.pt --out artifacts/export
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from fashion_serve.contract import (
    DEFAULT_MODEL_NAME,
    FASHION_MNIST_CLASSES,
    ModelContract,
)
from training import data
from training.evaluate import EVALUATION_FILE, METRICS_FILE, evaluate_checkpoint, write_metrics
from training.export import MODEL_FILE, ParityError, export_model
from training.train import (
    PRECISIONS,
    TrainConfig,
    default_threads,
    load_checkpoint,
    normalize,
    peak_memory_mb,
    pick_device,
    train,
)

log = logging.getLogger("training")
DEFAULTS = TrainConfig()
DRY_RUN_BATCHES = 3
PARITY_BATCH = 256


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, except None: those options' help says
    what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four IDX files (.gz or raw), looked in first; then "
        f"$FASHION_MNIST_DIR, {data.cache_dir()} and {data.DEBIAN_DIR}",
    )
    parser.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="download from the official mirrors (default: only when not found locally)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    hint = DefaultsHelpFormatter

    p = commands.add_parser(
        "train",
        help=f"train, evaluate on the test set ({METRICS_FILE}), write plots",
        formatter_class=hint,
    )
    add_data_args(p)
    p.add_argument("--out", type=Path, default=Path("artifacts/train"), help="output folder")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the data")
    p.add_argument(
        "--batch-size", type=int, default=DEFAULTS.batch_size, help="images per optimizer step"
    )
    p.add_argument("--max-lr", type=float, default=DEFAULTS.max_lr, help="OneCycle peak")
    p.add_argument(
        "--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW weight decay"
    )
    p.add_argument(
        "--erase-probability",
        type=float,
        default=DEFAULTS.erase_probability,
        help="random erasing per image (0: off)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=DEFAULTS.ema_decay,
        help="moving average of the weights, kept and exported (0: off)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="autocast dtype; auto: bf16 on CUDA, bf16 on a CPU with native bf16 where a probe "
        "finds it clearly faster than fp32, else fp32",
    )
    p.add_argument("--val-size", type=int, default=DEFAULTS.val_size, help="held-out images")
    p.add_argument(
        "--train-subset", type=int, help="use only the first N training images (default: all)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="seeds the validation split, initial weights, batch order and augmentation",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, default=default_threads(), help="CPU threads")
    p.add_argument("--resume", type=Path, help="continue from a last.pt checkpoint")
    p.add_argument("--dry-run", action="store_true", help=f"{DRY_RUN_BATCHES} batches, 1 epoch")

    p = commands.add_parser(
        "evaluate",
        help=f"test-set metrics ({EVALUATION_FILE}) and plots for a checkpoint; "
        f"training's {METRICS_FILE} is left as it is",
        formatter_class=hint,
    )
    add_data_args(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("artifacts/train/best.pt"),
        help="checkpoint to test",
    )
    p.add_argument("--out", type=Path, help="output folder (default: the checkpoint's)")

    p = commands.add_parser(
        "export", help="TorchScript + contract, checked against eager", formatter_class=hint
    )
    add_data_args(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("artifacts/train/best.pt"),
        help="checkpoint to export",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/export"),
        help=f"output folder for {MODEL_FILE}",
    )
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name in the contract")
    p.add_argument("--version", default="1.0", help="model version in the contract")
    return parser


def run_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        epochs=1 if args.dry_run else args.epochs,
        batch_size=args.batch_size,
        max_lr=args.max_lr,
        weight_decay=args.weight_decay,
        erase_probability=args.erase_probability,
        ema_decay=args.ema_decay,
        precision=args.precision,
        val_size=args.val_size,
        seed=args.seed,
        train_subset=args.train_subset,
        max_batches=DRY_RUN_BATCHES if args.dry_run else None,
    )
    if args.dry_run:
        config = replace(config, val_size=min(config.val_size, 512))
    device = pick_device(args.device)
    log.info("device %s, %d CPU threads, %s", device, torch.get_num_threads(), config)
    train_split = data.load("train", args.data_dir, args.download)
    best = train(train_split, config, args.out, device, resume=args.resume)
    model, state = load_checkpoint(args.out / "best.pt", device)
    metrics = evaluate_checkpoint(model, state, data.load("test", args.data_dir, False), args.out)
    # This process trained the model, so its peak is training's peak.
    metrics["peak_memory_mb"] = round(peak_memory_mb())
    write_metrics(metrics, args.out / METRICS_FILE)
    log.info(
        "test accuracy %.4f (best epoch %d of %d), %.0f s training, peak memory %d MB; wrote %s",
        metrics["test_accuracy"],
        best["epoch"],
        metrics["epochs"],
        metrics["train_seconds"],
        metrics["peak_memory_mb"],
        args.out,
    )


def run_evaluate(args: argparse.Namespace) -> None:
    model, state = load_checkpoint(args.checkpoint)
    out = args.out or args.checkpoint.parent
    metrics = evaluate_checkpoint(
        model, state, data.load("test", args.data_dir, args.download), out
    )
    write_metrics(metrics, out / EVALUATION_FILE)
    per_class = "\n".join(
        f"  {name:<12} {acc:.4f}" for name, acc in metrics["per_class_accuracy"].items()
    )
    log.info(
        "test accuracy %.4f\n%s\nwrote %s",
        metrics["test_accuracy"],
        per_class,
        out / EVALUATION_FILE,
    )


def class_prior(labels: torch.Tensor, num_classes: int = len(FASHION_MNIST_CLASSES)) -> tuple:
    """Each class's share of the training labels (the contract's class_prior)."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return tuple(round(float(share), 6) for share in counts / counts.sum())


def run_export(args: argparse.Namespace) -> None:
    model, state = load_checkpoint(args.checkpoint)
    metrics_path = args.checkpoint.parent / METRICS_FILE
    test_accuracy = (
        json.loads(metrics_path.read_text())["test_accuracy"] if metrics_path.exists() else None
    )
    contract = ModelContract(
        name=args.name,
        version=args.version,
        class_names=FASHION_MNIST_CLASSES,
        input_shape=(model.config.in_channels, model.config.image_size, model.config.image_size),
        mean=(state["mean"],),
        std=(state["std"],),
        test_accuracy=test_accuracy,
        class_prior=class_prior(data.load("train", args.data_dir, args.download).labels),
    )
    test = data.load("test", args.data_dir, args.download)
    example_batch = normalize(test.images[:PARITY_BATCH], state["mean"], state["std"])
    max_diff = export_model(model, contract, args.out, example_batch)
    log.info(
        "exported %s (test accuracy %s); TorchScript vs eager on %d test images: "
        "max |logit difference| %.2g",
        args.out / MODEL_FILE,
        test_accuracy,
        len(example_batch),
        max_diff,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        {"train": run_train, "evaluate": run_evaluate, "export": run_export}[args.command](args)
    except (data.DatasetNotFoundError, data.IdxFormatError, ParityError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
