"""Train the CNN: held-out validation, AdamW + OneCycle, augmentation, an exponential moving
average of the weights, best checkpoint kept.

python -m training train --out artifacts/train            # the full recipe
python -m training train --dry-run --out /tmp/dry         # a few batches, end to end
"""

from __future__ import annotations

import copy
import logging
import os
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fashion_serve.ig import cpu_has_native_bf16
from training.data import Split
from training.model import FashionCNN, ModelConfig, parameter_summary

log = logging.getLogger(__name__)

MAX_SHIFT_PX = 2
ERASE_AREA = (0.02, 0.2)  # random erasing: share of the image a rectangle covers
ERASE_ASPECT = (0.3, 3.3)  # its height / width
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *AUTOCAST_DTYPES)
BF16_MARGIN = 0.85  # auto takes bf16 on a CPU only if a step takes under 85 % of fp32's


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 25
    batch_size: int = 128
    max_lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    erase_probability: float = 0.5  # random erasing per image (0: off)
    ema_decay: float = 0.0  # exponential moving average of the weights per step (0: off)
    precision: str = "auto"  # one of PRECISIONS: see autocast_dtype
    val_size: int = 5000
    seed: int = 0
    train_subset: int | None = None  # use only the first N training images (quick runs)
    max_batches: int | None = None  # per epoch; set by --dry-run
    model: ModelConfig = field(default_factory=ModelConfig)


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(
    precision: str, device: torch.device, model: torch.nn.Module, batch_size: int
) -> torch.dtype | None:
    """The dtype autocast computes in, or None for plain fp32.

    auto: bf16 on CUDA where supported (fp16 with a gradient scaler where not); on a CPU with
    native bf16, bf16 if a probe finds its step clearly faster (BF16_MARGIN) than fp32's (1.7x
    faster on one 2-core VM, slower on another: docs/training.md); fp32 elsewhere.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return AUTOCAST_DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu" or not cpu_has_native_bf16():
        return None
    fp32_s, bf16_s = (step_seconds(model, batch_size, dtype) for dtype in (None, torch.bfloat16))
    log.info("seconds per step: fp32 %.3f, bf16 %.3f", fp32_s, bf16_s)
    # A clear margin: where the two are close, timing noise would pick either from run to run.
    return torch.bfloat16 if bf16_s < BF16_MARGIN * fp32_s else None


def step_seconds(
    model: torch.nn.Module, batch_size: int, amp_dtype: torch.dtype | None, steps: int = 3
) -> float:
    """Median seconds of a training step of a copy of `model` on random CPU data, after a
    warm-up step; the model and the random number generators are left as they were."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    config = model.config
    shape = (batch_size, config.in_channels, config.image_size, config.image_size)
    x = torch.randn(shape, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, config.num_classes, (batch_size,), generator=generator)
    times = []
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator
        for _ in range(steps + 1):
            started = time.perf_counter()
            with autocast("cpu", amp_dtype):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
    return sorted(times[1:])[steps // 2]


def autocast(device_type: str, amp_dtype: torch.dtype | None):
    """torch.autocast in amp_dtype, or a disabled one for plain fp32 (None)."""
    return torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype))


def precision_name(amp_dtype: torch.dtype | None) -> str:
    return next(name for name, dtype in AUTOCAST_DTYPES.items() if dtype == amp_dtype)


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalized float (N, 1, 28, 28)."""
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)


def augment(batch: torch.Tensor, generator: torch.Generator, background: float) -> torch.Tensor:
    """Random horizontal flip and a shift of up to MAX_SHIFT_PX per image. (B, 1, H, W).

    background is the normalized value of a black pixel, which fills what a shift uncovers.
    """
    n, _, h, w = batch.shape
    flip = torch.rand(n, generator=generator, device=batch.device) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    # A shift is a randomly offset 28x28 window cut out of a padded copy, by indexing.
    padded = F.pad(batch, (MAX_SHIFT_PX,) * 4, value=background)
    dy, dx = (torch.randint(0, 2 * MAX_SHIFT_PX + 1, (2, n), generator=generator)).to(batch.device)
    rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]  # (B, 1, 1, W)
    index = torch.arange(n, device=batch.device)[:, None, None, None]
    return padded[index, 0:1, rows, cols].view(n, 1, h, w)


def random_erase(
    batch: torch.Tensor, generator: torch.Generator, probability: float, background: float
) -> torch.Tensor:
    """Black out one random rectangle (ERASE_AREA of the image, ERASE_ASPECT) in each image
    with `probability`, so the model cannot lean on any one part of a garment. (B, 1, H, W)."""
    n, _, h, w = batch.shape
    draws = torch.rand(4, n, generator=generator)
    area = h * w * (ERASE_AREA[0] + draws[0] * (ERASE_AREA[1] - ERASE_AREA[0]))
    log_low, log_high = torch.log(torch.tensor(ERASE_ASPECT))
    aspect = torch.exp(log_low + draws[1] * (log_high - log_low))
    heights = (area * aspect).sqrt().round().clamp(1, h).long()
    widths = (area / aspect).sqrt().round().clamp(1, w).long()
    tops = (draws[2] * (h - heights + 1)).long()
    lefts = (draws[3] * (w - widths + 1)).long()
    erase = torch.rand(n, generator=generator) < probability
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= tops[:, None]) & (rows < (tops + heights)[:, None])  # (B, H)
    in_cols = (cols >= lefts[:, None]) & (cols < (lefts + widths)[:, None])  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]).to(batch.device)
    return batch.masked_fill(mask[:, None], background)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and predictions of model on normalized images (N, 1, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    losses, predictions = [], []
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        logits = model(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="sum").item())
        predictions.append(logits.argmax(1).cpu())
    predicted = torch.cat(predictions)
    accuracy = (predicted == labels).float().mean().item()
    return sum(losses) / len(labels), accuracy, predicted


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass(frozen=True)
class Splits:
    """Training and held-out validation images, normalized by the training images alone."""

    x_train: torch.Tensor  # (N, 1, 28, 28) float
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor  # (V, 1, 28, 28) float
    y_val: torch.Tensor  # (V,) int64
    mean: float
    std: float


@dataclass
class Run:
    """What a training run carries from epoch to epoch; a checkpoint saves all of it."""

    model: FashionCNN  # the weights being trained
    ema: torch.optim.swa_utils.AveragedModel | None  # their moving average, if configured
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # autocast's, or None for fp32
    generator: torch.Generator  # batch order and augmentation
    steps_per_epoch: int
    epoch: int = 0  # the last one finished
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    best: dict | None = None  # the checkpoint with the highest validation accuracy so far


def split_and_normalize(
    train_split: Split, config: TrainConfig, generator: torch.Generator
) -> Splits:
    """Hold out config.val_size random images for validation; normalize both parts."""
    images, labels = train_split.images, train_split.labels
    if config.train_subset:
        images, labels = images[: config.train_subset], labels[: config.train_subset]
    order = torch.randperm(len(labels), generator=generator)
    val_idx, train_idx = order[: config.val_size], order[config.val_size :]
    # Normalization comes from the training images only; it becomes part of the contract.
    mean = (images[train_idx].float() / 255).mean().item()
    std = (images[train_idx].float() / 255).std().item()
    # Whole splits live in memory as tensors: 55k x 784 floats is 172 MB, and skipping a
    # DataLoader saves more time per epoch than anything else on a small CPU (docs/training.md).
    return Splits(
        x_train=normalize(images[train_idx], mean, std),
        y_train=labels[train_idx],
        x_val=normalize(images[val_idx], mean, std),
        y_val=labels[val_idx],
        mean=mean,
        std=std,
    )


def build_run(
    config: TrainConfig, train_size: int, device: torch.device, generator: torch.Generator
) -> Run:
    """A fresh model with its optimizer, OneCycle schedule and mixed-precision settings."""
    model = FashionCNN(config.model).to(device)
    log.info("model:\n%s", parameter_summary(model))
    # channels_last: faster convolutions on CPU (docs/training.md), and the layout tensor
    # cores want.
    model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = -(-train_size // config.batch_size)
    if config.max_batches:
        steps_per_epoch = min(steps_per_epoch, config.max_batches)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.epochs * steps_per_epoch
    )
    amp_dtype = autocast_dtype(config.precision, device, model, config.batch_size)
    log.info("precision: %s", precision_name(amp_dtype))
    # fp16 needs its loss scaled so that small gradients do not underflow; bf16 does not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if config.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,  # batch norm statistics are averaged too
        )
    return Run(model, ema, optimizer, scheduler, scaler, amp_dtype, generator, steps_per_epoch)


def served_model(run: Run) -> torch.nn.Module:
    """The weights a checkpoint keeps for export and evaluation: the average, if there is one."""
    return run.ema.module if run.ema is not None else run.model


def resumed_precision(state: dict, asked: str) -> str:
    """The precision a resumed run continues in: the one its checkpoint `state` started in
    (whatever auto would pick on this machine today), or what is asked where it does not say."""
    started_in = state.get("precision")
    if started_in is None:
        return asked
    if asked not in ("auto", started_in):
        log.warning("--precision %s ignored: the run continues in %s, the precision it started in",
                    asked, started_in)  # fmt: skip
    return started_in


def resume_run(run: Run, state: dict, out_dir: Path) -> None:
    """Put run back where a last.pt checkpoint (its loaded `state`) left it, random number
    generators included, so that the resumed run continues exactly as an uninterrupted one
    would."""
    run.model.load_state_dict(state.get("train_model_state", state["model_state"]))
    if run.ema is not None:
        run.ema.load_state_dict(state["ema_state"])
    run.optimizer.load_state_dict(state["optimizer_state"])
    run.scheduler.load_state_dict(state["scheduler_state"])
    run.generator.set_state(state["generator_state"])
    torch.set_rng_state(state["torch_rng_state"])
    run.epoch, run.history = state["epoch"], state["history"]
    run.train_seconds = state["train_seconds"]
    if "scaler_state" in state:
        run.scaler.load_state_dict(state["scaler_state"])
    best_path = out_dir / "best.pt"
    run.best = torch.load(best_path, weights_only=False) if best_path.exists() else None


def train_one_epoch(
    run: Run, splits: Splits, config: TrainConfig, device: torch.device, epoch: int
) -> tuple[float, float]:
    """One pass over the (shuffled, augmented) training images: (mean loss, accuracy)."""
    run.model.train()
    permutation = torch.randperm(len(splits.y_train), generator=run.generator)
    batches = permutation.split(config.batch_size)[: run.steps_per_epoch]
    loss_sum = correct = seen = 0
    # disable=None: a bar on terminals only, not thousands of lines in CI logs and files
    progress = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None)
    background = -splits.mean / splits.std  # a black pixel, normalized
    for batch_idx in progress:
        x = augment(splits.x_train[batch_idx], run.generator, background=background)
        if config.erase_probability:
            x = random_erase(x, run.generator, config.erase_probability, background)
        x = x.to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = splits.y_train[batch_idx].to(device)
        with autocast(device.type, run.amp_dtype):
            logits = run.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        progress.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return loss_sum / seen, correct / seen


def save_checkpoint(run: Run, config: TrainConfig, splits: Splits, out_dir: Path) -> None:
    """Write last.pt after every epoch, and best.pt when validation accuracy improved."""
    val_accuracy = run.history[-1]["val_accuracy"]
    state = dict(
        model_config=asdict(config.model),
        train_config=asdict(config),
        model_state=served_model(run).state_dict(),  # what export and evaluate load
        optimizer_state=run.optimizer.state_dict(),
        scheduler_state=run.scheduler.state_dict(),
        generator_state=run.generator.get_state(),
        torch_rng_state=torch.get_rng_state(),  # dropout draws from it
        epoch=run.epoch,
        history=run.history,
        val_accuracy=val_accuracy,
        train_seconds=run.train_seconds,
        mean=splits.mean,
        std=splits.std,
        precision=precision_name(run.amp_dtype),
        scaler_state=run.scaler.state_dict(),
    )
    if run.ema is not None:  # resuming needs both the trained weights and their average
        state.update(train_model_state=run.model.state_dict(), ema_state=run.ema.state_dict())
    torch.save(state, out_dir / "last.pt")
    if run.best is None or val_accuracy > run.best["val_accuracy"]:
        # A copy: state_dict() tensors share storage with the model, which trains on.
        run.best = copy.deepcopy(state)
        torch.save(state, out_dir / "best.pt")


def train(
    train_split: Split,
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    resume: Path | None = None,
) -> dict:
    """Train and write last.pt / best.pt into out_dir. Returns the best checkpoint dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    splits = split_and_normalize(train_split, config, generator)
    state = torch.load(resume, map_location=device, weights_only=False) if resume else None
    if state is not None:
        config = replace(config, precision=resumed_precision(state, config.precision))
    run = build_run(config, len(splits.y_train), device, generator)
    if state is not None:
        resume_run(run, state, out_dir)
        log.info("resumed from %s at epoch %d", resume, run.epoch + 1)

    for epoch in range(run.epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        train_loss, train_accuracy = train_one_epoch(run, splits, config, device, epoch)
        epoch_seconds = time.perf_counter() - started
        run.train_seconds += epoch_seconds
        val_loss, val_accuracy, _ = evaluate(served_model(run), splits.x_val, splits.y_val)
        run.epoch = epoch
        run.history.append(
            dict(
                epoch=epoch,
                train_loss=train_loss,
                train_accuracy=train_accuracy,
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                seconds=epoch_seconds,
            )
        )
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.1f s",
            epoch, config.epochs, train_loss, train_accuracy, val_loss, val_accuracy,
            epoch_seconds,
        )  # fmt: skip
        save_checkpoint(run, config, splits, out_dir)

    best = dict(run.best, history=run.history, train_seconds=run.train_seconds)
    torch.save(best, out_dir / "best.pt")  # with the whole run's history and time
    log.info("peak memory %.0f MB", peak_memory_mb())
    return best


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[FashionCNN, dict]:
    state = torch.load(path, map_location=device, weights_only=False)
    config = dict(state["model_config"])
    config["channels"] = tuple(config["channels"])
    model = FashionCNN(ModelConfig(**config)).to(device)
    model.load_state_dict(state["model_state"])
    return model.to(memory_format=torch.contiguous_format).eval(), state


def default_threads() -> int:
    return len(os.sched_getaffinity(0))
