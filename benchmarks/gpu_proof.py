"""One run on a GPU machine that proves the project's own code on CUDA, and measures it.

1. parity: TorchServeHandler, initialized in a real ts.context.Context as a TorchServe worker
   does it, answers the sample images (predictions and explanations) and bad inputs on the
   device as on the CPU: same statuses and refusals, same top-1 and targets, probabilities
   and attributions within benchmarks.device_parity's tolerances. Checked twice: in full
   fp32 (TF32 off), and with torch's defaults as the handler is served (cuDNN may use TF32).
2. speed: images/s of handle() on PNG bodies and of the model alone on a ready tensor at
   each --batch-sizes, and explanations/s (default integrated-gradients steps) at each
   --explain-batch-sizes.
3. training: one epoch of `python -m training train` on the device, its time and test accuracy.
4. one JSON summary, printed and written to OUT/gpu_proof.json; exit 0 only if every
   check passed.

On this machine (CPU against CPU: trivially equal, but every code path runs):
    python -m benchmarks.gpu_proof --device cpu --batch-sizes 1 8 --explain-batch-sizes 1 2 \
        --train-dry-run --out build/gpu-proof-cpu

On the GPU machine, which has torch but no TorchServe, captum, tqdm, psutil or matplotlib
and no internet: first, here, `benchmarks/gpu_bundle.sh` (fills build/gpu-bundle/: those
packages, TorchServe without its Java frontend, matplotlib as Python 3.12 wheels; the
exported model; the gzipped FashionMNIST; about 50 MiB), then there, carrying
build/gpu-bundle, from the repository root:
    PYTHONPATH=handler python3 -m benchmarks.gpu_proof --bundle build/gpu-bundle --out "$OUT"
(--device cuda is the default; handler/ holds the handler's flat modules, as in an archive.)

Serving the archive with the real TorchServe on the GPU is the second run, on the still-warm
machine: benchmarks/gpu_serve.py (its Java runtime and frontend would not fit beside this
bundle in one run's 64 MiB).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("gpu_proof")
REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_FILE = "gpu_proof.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_proof",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--device", default="cuda", help="device to prove against the CPU (default: %(default)s)")
    add(
        "--bundle",
        type=Path,
        help="folder made by benchmarks/gpu_bundle.sh (site/, export/, data/)",
    )
    add(
        "--export-dir",
        type=Path,
        help="model.pt + index_to_name.json (default: BUNDLE/export, else artifacts/export)",
    )
    add(
        "--data-dir",
        type=Path,
        help="the four FashionMNIST IDX files (default: BUNDLE/data, else training's search)",
    )
    add("--samples-dir", type=Path, default=REPO_ROOT / "samples", help="sample PNGs + index.json")
    add(
        "--out",
        type=Path,
        default=Path("build/gpu-proof"),
        help="where gpu_proof.json goes (default: %(default)s)",
    )
    add(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 64, 1024],
        help="prediction batch sizes (default: %(default)s)",
    )
    add(
        "--explain-batch-sizes",
        type=int,
        nargs="+",
        default=[1, 64],
        help="explanation batch sizes (default: %(default)s)",
    )
    add(
        "--seconds",
        type=float,
        default=2.0,
        help="timed seconds per figure, after warm-up (default: %(default)s)",
    )
    add(
        "--train-dry-run",
        action="store_true",
        help="train a few batches only (training's --dry-run)",
    )
    return parser  # fmt: skip


def use_bundle(bundle: Path) -> None:
    """Make the bundle's packages importable.

    The one sys.path insertion in the project, on purpose: the GPU machine has no package
    index and the project is not installed there; what it lacks travels in the bundle:
    BUNDLE/site as plain folders (TorchServe's Python side, captum, tqdm, psutil) and
    BUNDLE/wheels as wheels (matplotlib, which captum imports, and its dependencies),
    unpacked here into a temporary folder: a wheel is a zip of what goes in site-packages.
    Appended, not prepended, so the machine's own packages win and the bundle fills gaps.
    """
    site = bundle / "site"
    if not site.is_dir():
        raise SystemExit(f"{site} not found: make it with benchmarks/gpu_bundle.sh")
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    foreign = [w.name for w in wheels if "-cp" in w.name and f"-{python_tag}-" not in w.name]
    if foreign:
        raise SystemExit(
            f"{bundle / 'wheels'} holds wheels built for another Python ({foreign[0]}); this "
            f"is {platform.python_version()}: rebuild with GPU_PYTHON="
            f"{sys.version_info.major}.{sys.version_info.minor} benchmarks/gpu_bundle.sh"
        )
    sys.path.append(str(site.resolve()))
    if wheels:
        unpacked = tempfile.mkdtemp(prefix="gpu-proof-wheels-")
        atexit.register(shutil.rmtree, unpacked, ignore_errors=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(unpacked)
        sys.path.append(unpacked)


@contextmanager
def tf32(allowed: bool):
    """TF32 for cuDNN convolutions and CUDA matmuls on or off, restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def environment(device: torch.device) -> dict:
    import captum
    import ts.version

    facts = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "captum": captum.__version__,
        "torchserve_python": ts.version.__version__,
        "default_tf32": {
            "cudnn_conv": torch.backends.cudnn.allow_tf32,
            "cuda_matmul": torch.backends.cuda.matmul.allow_tf32,
        },
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def prove_parity(export_dir: Path, device: torch.device, samples: dict[str, bytes]) -> dict:
    """Reference answers on the CPU, then the device's, in fp32 and as served."""
    from benchmarks import device_parity as parity
    from tests.support.handler_context import initialized_handler
    from tests.support.servers import model_config

    batches = parity.request_sets(samples)
    # fp32 gradients on the CPU too: where its CPU computes bf16 natively, the handler's
    # default would round the reference's gradients to bf16 (fashion_serve.ig).
    config = model_config()
    config["handler"] = {**(config.get("handler") or {}), "bf16_gradients": False}
    cpu_handler, cpu_context = initialized_handler(
        export_dir, device="cpu", model_yaml_config=config
    )
    reference = parity.answer_batches(cpu_handler, cpu_context, batches)
    handler, context = initialized_handler(export_dir, device=str(device), model_yaml_config=config)
    with tf32(False):
        fp32 = parity.answer_batches(handler, context, batches)
    served = parity.answer_batches(handler, context, batches)
    return {
        "handler_device": str(handler.service.device),
        "refusal_problems": parity.refusals_are_refused(reference),
        "statuses": {name: [a["status"] for a in answers] for name, answers in reference.items()},
        "reference_top1": [next(iter(a["body"])) for a in reference["predict"]],
        "fp32": parity.compare(reference, fp32, parity.FP32),
        "served": parity.compare(reference, served, parity.TF32),
    }


def measure_speed(
    export_dir: Path, device: torch.device, samples: dict[str, bytes], args: argparse.Namespace
) -> dict:
    from benchmarks.device_speed import explanation_rates, prediction_rates
    from benchmarks.inprocess import Pipeline

    pipeline = Pipeline(export_dir, str(device), batch_size=max(args.batch_sizes))
    images = list(samples.values())
    return {
        "predict": prediction_rates(pipeline, images, args.batch_sizes, args.seconds),
        "explain": explanation_rates(pipeline, images, args.explain_batch_sizes, args.seconds),
    }


def train_one_epoch(device: torch.device, data_dir: Path | None, dry_run: bool) -> dict:
    """`python -m training train --epochs 1` on the device, in this process."""
    from training.__main__ import main as training_main  # imports tqdm: after the bundle

    with tempfile.TemporaryDirectory(prefix="gpu-proof-train-") as work:
        argv = ["train", "--epochs", "1", "--device", str(device), "--out", work, "--no-download"]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        if dry_run:
            argv.append("--dry-run")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        exit_code = training_main(argv)
        wall_seconds = time.perf_counter() - started
        metrics_path = Path(work) / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    result = {
        "exit_code": exit_code,
        "dry_run": dry_run,
        "wall_seconds": round(wall_seconds, 1),  # data loading, epoch, evaluation, checkpoints
        "epoch_seconds": metrics.get("seconds_per_epoch", [None])[0],
        "test_accuracy": metrics.get("test_accuracy"),
        "best_val_accuracy": metrics.get("best_val_accuracy"),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return result


def summarize(env: dict, parity: dict, speed: dict, training: dict, device: torch.device) -> dict:
    checks = {
        "handler_on_device": torch.device(parity["handler_device"]).type == device.type,
        "bad_inputs_refused": not parity["refusal_problems"],
        "parity_fp32": parity["fp32"]["passed"],
        "parity_served": parity["served"]["passed"],
        "training_ran": training["exit_code"] == 0 and training["test_accuracy"] is not None,
    }
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "environment": env,
        "parity": parity,
        "speed": speed,
        "training": training,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.error("--device %s asked for, but torch sees no CUDA device", args.device)
        return 2
    if args.bundle:
        use_bundle(args.bundle)
    from benchmarks.device_parity import load_samples  # imports TorchServe: after the bundle

    export_dir = args.export_dir or (
        args.bundle / "export" if args.bundle else REPO_ROOT / "artifacts" / "export"
    )
    data_dir = args.data_dir or (args.bundle / "data" if args.bundle else None)
    if not (export_dir / "model.pt").is_file():
        log.error("no %s: export a model (python -m training export) or pass --export-dir",
                  export_dir / "model.pt")  # fmt: skip
        return 2

    started = time.perf_counter()
    samples = load_samples(args.samples_dir)
    env = environment(device)
    log.info("parity: %d samples and bad inputs, CPU against %s", len(samples), device)
    parity = prove_parity(export_dir, device, samples)
    log.info("speed: batch sizes %s, explanations %s", args.batch_sizes, args.explain_batch_sizes)
    speed = measure_speed(export_dir, device, samples, args)
    log.info("training: one epoch on %s", device)
    training = train_one_epoch(device, data_dir, args.train_dry_run)

    summary = summarize(env, parity, speed, training, device)
    summary["seconds_total"] = round(time.perf_counter() - started, 1)
    return finish(summary, args.out / SUMMARY_FILE)


def finish(summary: dict, path: Path) -> int:
    """Write the summary to `path` as JSON and print it; 0 if every check passed, else 1
    (the failed ones logged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2)
    path.write_text(text + "\n")
    print(text)
    failed = [name for name, passed in summary["checks"].items() if not passed]
    log.info("%s; wrote %s", f"FAILED: {', '.join(failed)}" if failed else "all checks passed",
             path)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
