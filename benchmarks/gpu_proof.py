"""One run on a GPU machine that proves the serving core on CUDA, measures it, and trains there.

1. parity: the serving core both runtimes call, fashion_serve's FashionService, answers one
   mixed batch (every sample predicted and explained, an asked-for target and step count,
   bad inputs among them) on the device as on the CPU: the same statuses and refusals, the
   same top-1 and targets, probabilities and attributions within FP32 / TF32 below. Twice:
   in full fp32 (TF32 off), and with torch's defaults as served (cuDNN may use TF32).
2. speed: images/s of FashionService.run on PNG bodies and of the model alone on a ready
   tensor at each --batch-sizes; explanations/s at each --explain-batch-sizes.
3. training: one epoch of `python -m training train` on the device, its time and accuracy.
4. a JSON summary, printed and written to OUT/gpu_proof.json; exit 0 only if every check
   passed.

The GPU machine has torch, numpy, pillow and pyyaml, but no tqdm (training's progress bars),
no Captum (the FashionCNN's explanations need none) and no internet; the exported model and
FashionMNIST are not in the working tree. A bundle of tqdm, the model and the gzipped IDX
files (about 32 MiB) is made here, carried, and used there:
    python -m benchmarks.gpu_proof --make-bundle build/gpu-bundle
    PYTHONPATH=handler python3 -m benchmarks.gpu_proof --bundle build/gpu-bundle --out "$OUT"
(--device cuda is the default; handler/ holds fashion_serve, the project is not installed.)
Every code path on this machine (CPU against CPU: equal by construction):
    python -m benchmarks.gpu_proof --device cpu --batch-sizes 1 8 --explain-batch-sizes 1 2 \
        --train-dry-run

No TorchServe runs here: the core is what runs on the device. Serving through TorchServe on
a GPU needs its Java frontend; where there is one: `python -m pytest -m gpu` (the handler on
the GPU id TorchServe assigns) and `python -m benchmarks.bench --device cuda`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from fashion_serve.service import FashionService, Request
from fashion_serve.settings import HandlerSettings
from tests.support.parity import FP32, TF32, Tolerances, answer_problems, tf32

log = logging.getLogger("gpu_proof")
REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_FILE = "gpu_proof.json"
MAX_BUNDLE_MIB = 60  # a device run carries at most 64 MiB
MAX_LISTED_FAILURES = 10


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_proof", description=__doc__, formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add("--device", default="cuda", help="device to prove against the CPU")
    add("--make-bundle", type=Path, metavar="DIR", help="only fill DIR for the GPU machine")
    add("--bundle", type=Path, help="a folder made by --make-bundle (site/, export/, data/)")
    add("--export-dir", type=Path, help="model.pt (default: BUNDLE/export, artifacts/export)")
    add("--data-dir", type=Path, help="the IDX files (default: BUNDLE/data, training's search)")
    add("--samples-dir", type=Path, default=REPO_ROOT / "samples", help="sample PNGs + index.json")
    add("--out", type=Path, default=Path("build/gpu-proof"), help="folder for gpu_proof.json")
    add("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024], help="predictions")
    add("--explain-batch-sizes", type=int, nargs="+", default=[1, 64], help="explanations")
    add("--seconds", type=float, default=2.0, help="timed seconds per figure, after warm-up")
    add("--train-dry-run", action="store_true", help="train a few batches only (--dry-run)")
    return parser


def make_bundle(bundle: Path, export_dir: Path, data_dir: Path | None) -> int:
    """Fill `bundle` with what the GPU machine lacks: tqdm, the model, the IDX files."""
    import tqdm

    from training import data

    if not (export_dir / "model.pt").is_file():
        log.error("no %s: run python -m training export, or pass --export-dir", export_dir)
        return 2
    found = data.find_data_dir(data_dir)
    if found is None:
        searched = ", ".join(map(str, data.candidate_dirs(data_dir)))
        log.error("no FashionMNIST IDX files in %s: pass --data-dir", searched)
        return 2
    shutil.rmtree(bundle, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(tqdm.__file__).parent, bundle / "site" / "tqdm", ignore=skip)
    shutil.copytree(export_dir, bundle / "export", ignore=shutil.ignore_patterns("*.pt2"))
    (bundle / "data").mkdir()
    for stem in data.FILES_MD5:
        idx_file = next(path for path in (found / f"{stem}.gz", found / stem) if path.is_file())
        shutil.copy(idx_file, bundle / "data")
    mib = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20
    log.info("bundle %s: %.1f MiB (at most %d)", bundle, mib, MAX_BUNDLE_MIB)
    if mib > MAX_BUNDLE_MIB:
        log.error("%s is over %d MiB: are the IDX files gzipped?", bundle, MAX_BUNDLE_MIB)
        return 1
    return 0


def load_service(export_dir: Path, device: torch.device) -> FashionService:
    """The core as both runtimes build it, with handler/model-config.yaml's settings, except
    fp32 gradients on the CPU too: where its CPU computes bf16 natively, the default would
    round the reference's gradients to bf16 (fashion_serve.ig)."""
    config = yaml.safe_load((REPO_ROOT / "handler" / "model-config.yaml").read_text())
    settings = HandlerSettings.from_model_yaml(config)
    settings = dataclasses.replace(settings, bf16_gradients=False)
    return FashionService(export_dir / "model.pt", settings, device, "fashion-cnn")


def parity_batch(samples: dict[str, bytes]) -> list[tuple[str, Request, int]]:
    """(name, request, expected status) for one mixed batch: every sample predicted (all
    classes: a near-tie at a top-k cut-off may swap) and explained, and bad inputs, each of
    which must be refused alone."""
    first = next(iter(samples.values()))
    rows = [
        (f"predict/{name}", body, {"X-Topk": "10"}, False, 200) for name, body in samples.items()
    ]
    rows += [(f"explain/{name}", body, {}, True, 200) for name, body in samples.items()]
    rows += [
        ("explain/bag_16_steps", first, {"X-Target": "Bag", "X-Steps": "16"}, True, 200),
        ("not_an_image", b"not an image", {}, False, 400),
        ("empty_body", b"", {}, False, 400),
        ("truncated_png", first[: len(first) // 3], {}, False, 400),
        ("bad_base64_json", {"data": "not base64 !!"}, {}, False, 400),
        ("topk_out_of_range", first, {"X-Topk": "99"}, False, 422),
        ("unknown_target", first, {"X-Target": "Hat"}, True, 422),
        ("steps_out_of_range", first, {"X-Steps": "100000"}, True, 422),
    ]
    return [
        (name, Request({"body": body}, headers, explain), status)
        for name, body, headers, explain, status in rows
    ]


def compare(names: list[str], reference: list, candidate: list, tolerances: Tolerances) -> dict:
    """The CPU's answers (fashion_serve.service.Answer) against a device's, request by
    request: passed, the measured gaps beside the tolerances, and the first failures."""
    failures: list[str] = []
    gaps = {"probability_abs": 0.0, "attribution_scaled": 0.0}
    for name, ref, cand in zip(names, reference, candidate, strict=True):
        if cand.status != ref.status or (ref.status != 200 and cand.body != ref.body):
            failures.append(f"{name}: {cand.status} {cand.body} != {ref.status} {ref.body}")
        elif ref.status == 200:
            problems = answer_problems(ref.body, cand.body, tolerances, gaps)
            failures += [f"{name}: {problem}" for problem in problems]
    return {
        "passed": not failures,
        "tolerances": dataclasses.asdict(tolerances),
        "measured": {key: float(f"{gap:.3g}") for key, gap in gaps.items()},
        "failures": failures[:MAX_LISTED_FAILURES],
        "failure_count": len(failures),
    }


def prove_parity(export_dir: Path, service: FashionService, samples: dict[str, bytes]) -> dict:
    """The CPU's answers to the batch, then the device's (`service`) in full fp32 and with
    torch's defaults."""
    names, requests, expected = zip(*parity_batch(samples), strict=True)
    reference = load_service(export_dir, torch.device("cpu")).run(list(requests))
    with tf32(False):
        fp32 = service.run(list(requests))
    as_served = service.run(list(requests))
    statuses = [answer.status for answer in reference]
    return {
        "service_device": str(service.device),
        "integrated_gradients": "captum" if service.relu_chain is None else "fashion_serve.ig",
        "statuses": dict(zip(names, statuses, strict=True)),
        "statuses_as_expected": statuses == list(expected),
        "fp32": compare(list(names), reference, fp32, FP32),
        "torch_defaults": compare(list(names), reference, as_served, TF32),
    }


def rate(call: Callable[[], object], images: int, seconds: float, device: torch.device) -> dict:
    """Images/s of `call` over about `seconds` after a warm-up. Each call waits for the
    device: CUDA returns once kernels are queued, not when they are done."""

    def timed() -> float:
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    for _ in range(3):
        timed()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        times.append(timed())
    return {
        "images_per_s": round(len(times) * images / sum(times), 1),
        "calls": len(times),
        "p50_ms_per_call": round(statistics.median(times) * 1000, 3),
    }


def measure_speed(service: FashionService, samples: dict[str, bytes], args) -> dict:
    """Per batch size: run() on PNG requests (parse, decode, tensor, model, top-k), the model
    alone on a tensor already there, and explanations at the default steps (heatmaps
    included); the images cycle through the samples."""
    device, images = service.device, list(samples.values())

    def timed_run(size: int, explain: bool = False) -> dict:
        batch = [Request({"body": images[i % len(images)]}, explain=explain) for i in range(size)]
        return rate(lambda: service.run(batch), size, args.seconds, device)

    def timed_model(size: int) -> dict:
        ready = torch.randn(size, *service.contract.input_shape, device=device)
        return rate(lambda: service.logits(ready), size, args.seconds, device)

    return {
        "run": {f"batch_{size}": timed_run(size) for size in args.batch_sizes},
        "model": {f"batch_{size}": timed_model(size) for size in args.batch_sizes},
        "explain": {f"batch_{size}": timed_run(size, True) for size in args.explain_batch_sizes},
        "explain_steps": service.limits.default_steps,
    }


def train_one_epoch(device: torch.device, data_dir: Path | None, dry_run: bool) -> dict:
    """`python -m training train --epochs 1` on the device, in this process."""
    from training.__main__ import main as training_main  # imports tqdm: after the bundle

    with tempfile.TemporaryDirectory(prefix="gpu-proof-train-") as work:
        argv = ["train", "--epochs", "1", "--device", str(device), "--out", work, "--no-download"]
        argv += ["--data-dir", str(data_dir)] if data_dir else []
        argv += ["--dry-run"] if dry_run else []
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
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return result


def environment(device: torch.device) -> dict:
    facts = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "default_tf32_conv": torch.backends.cudnn.allow_tf32,
        "default_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    bundle = args.bundle
    export_dir = args.export_dir or (bundle or REPO_ROOT / "artifacts") / "export"
    if args.make_bundle:
        return make_bundle(args.make_bundle, export_dir, args.data_dir)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.error("--device %s asked for, but torch sees no CUDA device", args.device)
        return 2
    if bundle:
        # The GPU machine has no package index and the project is not installed there.
        # Appended: the machine's own packages win, the bundle fills gaps.
        sys.path.append(str((bundle / "site").resolve()))
    if not (export_dir / "model.pt").is_file():
        log.error("no %s: run python -m training export, or pass --export-dir", export_dir)
        return 2
    try:
        import captum  # noqa: F401
    except ImportError:  # as on the GPU machine: the FashionCNN's explanations need none
        log.info("no captum here: the service's background import of it is left to fail")
        default_hook = threading.excepthook
        threading.excepthook = lambda hook_args: (
            None if hook_args.thread.name == "captum-import" else default_hook(hook_args)
        )

    started = time.perf_counter()
    index = json.loads((args.samples_dir / "index.json").read_text())
    samples = {
        name: (args.samples_dir / name).read_bytes()
        for name in sorted(index, key=lambda name: index[name]["label"])
    }
    log.info("parity: %d samples and bad inputs, CPU against %s", len(samples), device)
    service = load_service(export_dir, device)
    parity = prove_parity(export_dir, service, samples)
    log.info("speed: batch sizes %s, explanations %s", args.batch_sizes, args.explain_batch_sizes)
    speed = measure_speed(service, samples, args)
    log.info("training: one epoch on %s", device)
    training = train_one_epoch(
        device, args.data_dir or (bundle / "data" if bundle else None), args.train_dry_run
    )
    checks = {
        "service_on_device": torch.device(parity["service_device"]).type == device.type,
        "statuses_as_expected": parity["statuses_as_expected"],
        "parity_fp32": parity["fp32"]["passed"],
        "parity_torch_defaults": parity["torch_defaults"]["passed"],
        "training_ran": training["exit_code"] == 0 and training["test_accuracy"] is not None,
    }
    summary = {
        "passed": all(checks.values()),
        "checks": checks,
        "environment": environment(device),
        "parity": parity,
        "speed": speed,
        "training": training,
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    path = args.out / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2)
    path.write_text(text + "\n")
    print(text)
    failed = [name for name, passed in checks.items() if not passed]
    log.info("%s; wrote %s", f"FAILED: {failed}" if failed else "all checks passed", path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
