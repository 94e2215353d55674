"""python -m benchmarks.bench: a short run end to end (in-process, TorchServe, the kserve
runtime, LitServe), and the clean skip without CUDA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.reliability


def run_bench(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_cuda_device_skips_cleanly_without_cuda(tiny_export_dir, tmp_path):
    done = run_bench("--device", "cuda", "--export-dir", str(tiny_export_dir),
                     "--out", str(tmp_path / "bench.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CUDA is not available" in done.stdout
    assert not (tmp_path / "bench.json").exists()


def test_profile_shows_where_a_request_spends_its_time(tiny_export_dir):
    done = run_bench("--profile", "--export-dir", str(tiny_export_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cProfile: TorchServeHandler.handle" in done.stdout
    assert "prepare_image" in done.stdout or "decode_image" in done.stdout
    assert "torch.profiler: FashionService.logits" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing: scripts/test-tools.sh")
def test_short_bench_run_measures_every_part_without_errors(tiny_export_dir, tmp_path):
    out = tmp_path / "bench.json"
    done = run_bench(
        "--export-dir", str(tiny_export_dir), "--out", str(out),
        "--duration", "1", "--explain-duration", "1", "--in-process-s", "0.3",
        "--concurrency", "1", "4", "--warmup-s", "1", "--warmup-max-s", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    local = results["in_process"]
    assert local["batch_1"]["images_per_s"] > 0
    assert local["ceiling"]["images_per_s"] > 0
    assert local["explain_batch_1"]["images_per_s"] > 0
    assert local["explain_ceiling"]["images_per_s"] > 0
    served = [results["torchserve"][key] for key in ("predict", "explain", "predict_v2")]
    kserve = results["kserve"]  # the same archive on the kserve runtime, the same series
    served += [kserve[key] for key in ("predict", "explain", "predict_json", "predict_v2")]
    served.append(kserve["grpc"])  # OIP gRPC ModelInfer, each answer checked against REST
    served += [run["predict"] for run in results["litserve"].values()]
    for points in served:
        assert set(points) == {"c1", "c4"}
        for point in points.values():
            assert point["requests"] > 0
            assert point["non_2xx"] == 0 and point["socket_errors"] == 0, point
    # One warm-up window each (--warmup-max-s 1); TorchServe's also measure its JIT's share.
    ts_warmup = results["torchserve"]["warmup"]
    assert set(ts_warmup) == {"predict", "explain", "predict_json", "predict_v2"}
    for windows in ts_warmup.values():
        assert len(windows) == 1 and 0 <= windows[0]["jit_cpu_share"] <= 1, windows
    assert all(len(run["warmup"]) == 1 for run in results["litserve"].values())
    # No JVM on the kserve runtime: one window each, and no JIT share to measure.
    assert set(kserve["warmup"]) == {"predict", "explain", "predict_json", "predict_v2"}
    assert all(len(w) == 1 and "jit_cpu_share" not in w[0] for w in kserve["warmup"].values())
    # The supervisor only watches: the workers do the work.
    cpu = kserve["predict"]["c4"]["cpu_ms_per_request"]
    assert set(cpu) == {"supervisor", "workers"} and cpu["workers"] > 0
    targets = {check["target"] for check in results["targets"]}
    assert {target.split(" ")[0] for target in targets} >= {"served", "p50"}
    assert {
        "KServe runtime at c1: p50 below LitServe's best and below TorchServe's",
        "KServe runtime at c4: at least 2x LitServe's best",
        "Explanations: no fewer per second than TorchServe's at c1 and c4",
    } <= targets
    assert "| TorchServe predict (PNG bytes) | 1 |" in done.stdout
    assert "| TorchServe predict (v2 JSON base64) | 1 |" in done.stdout
    assert "| KServe runtime predict (PNG bytes) | 4 |" in done.stdout
    assert "| KServe runtime gRPC ModelInfer (Python tritonclient) | 1 |" in done.stdout
