"""benchmarks.gpu_proof end to end (CPU against CPU here, CUDA where there is one), and the
comparison that decides whether a device's answers equal the CPU's."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zipfile

import pytest
import torch

from benchmarks import device_parity as parity
from benchmarks.gpu_proof import SUMMARY_FILE, use_bundle
from tests.conftest import REPO_ROOT
from tests.docker.test_lint import tool
from tests.training.idx_files import write_dataset

CHECKS = {"handler_on_device", "bad_inputs_refused", "parity_fp32", "parity_served", "training_ran"}


def run_proof(device: str, export_dir, tmp_path) -> tuple[subprocess.CompletedProcess, dict]:
    data_dir = write_dataset(tmp_path / "idx", n_train=600, n_test=200)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "benchmarks.gpu_proof", "--device", device,
        "--export-dir", str(export_dir), "--data-dir", str(data_dir), "--out", str(out),
        "--batch-sizes", "1", "4", "--explain-batch-sizes", "1", "2", "--seconds", "0.05",
        "--train-dry-run",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / SUMMARY_FILE).read_text()) if (out / SUMMARY_FILE).exists() else {}
    return result, summary


def assert_sane(result: subprocess.CompletedProcess, summary: dict, device_type: str) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == summary  # the printed summary is the written one
    assert set(summary["checks"]) == CHECKS
    assert summary["passed"] and all(summary["checks"].values())
    assert torch.device(summary["parity"]["handler_device"]).type == device_type

    statuses = summary["parity"]["statuses"]
    assert statuses["predict"] == [200] * 10  # the ten sample images
    assert statuses["explain"] == [200] * 11
    assert statuses["refused"] == [400, 400, 400, 400, 422, 200, 422, 422]
    for mode in ("fp32", "served"):
        assert summary["parity"][mode]["failure_count"] == 0
        measured, allowed = (summary["parity"][mode][k] for k in ("measured", "tolerances"))
        assert measured["probability_abs"] <= allowed["probability_abs"]
        assert measured["attribution_min_cosine"] > 0.99

    speed = summary["speed"]
    for kind in ("handle", "model"):
        assert set(speed["predict"][kind]) == {"batch_1", "batch_4"}
        for size in (1, 4):
            figures = speed["predict"][kind][f"batch_{size}"]
            assert figures["batch_size"] == size and figures["calls"] >= 5
            assert figures["images_per_s"] > 0 and figures["p50_ms_per_call"] > 0
    assert speed["explain"]["steps"] == 50  # handler/model-config.yaml's default
    assert speed["explain"]["batch_2"]["images_per_s"] > 0

    training = summary["training"]
    assert training["exit_code"] == 0 and training["dry_run"]
    assert 0.0 <= training["test_accuracy"] <= 1.0
    assert training["epoch_seconds"] > 0 and training["wall_seconds"] >= training["epoch_seconds"]


def test_proof_on_cpu_checks_and_measures_everything(tiny_export_dir, tmp_path):
    result, summary = run_proof("cpu", tiny_export_dir, tmp_path)
    assert_sane(result, summary, "cpu")
    assert summary["parity"]["fp32"]["measured"]["probability_abs"] == 0.0  # same code, same CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_proof_on_cuda_matches_the_cpu(tiny_export_dir, tmp_path):
    result, summary = run_proof("cuda", tiny_export_dir, tmp_path)
    assert_sane(result, summary, "cuda")
    assert summary["environment"]["gpu"]
    assert "peak_gpu_memory_mb" in summary["training"]


def test_bundle_packages_import_from_folders_and_wheels(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "site" / "bundled_folder_probe").mkdir(parents=True)
    (tmp_path / "site" / "bundled_folder_probe" / "__init__.py").write_text("ANSWER = 1\n")
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / "probe-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("bundled_wheel_probe.py", "ANSWER = 2\n")
    for name in ("bundled_folder_probe", "bundled_wheel_probe"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    use_bundle(tmp_path)

    import bundled_folder_probe
    import bundled_wheel_probe

    assert (bundled_folder_probe.ANSWER, bundled_wheel_probe.ANSWER) == (1, 2)
    assert sys.path[-2] == str((tmp_path / "site").resolve())  # appended: the machine's own win


def test_bundle_wheels_for_another_python_are_refused_with_the_fix(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "wheels").mkdir()
    zipfile.ZipFile(tmp_path / "wheels" / "probe-1.0-cp20-cp20-linux_x86_64.whl", "w").close()
    with pytest.raises(SystemExit, match="GPU_PYTHON="):
        use_bundle(tmp_path)


def test_bundle_script_passes_shellcheck_and_says_what_is_missing(tmp_path):
    script = REPO_ROOT / "benchmarks" / "gpu_bundle.sh"
    lint = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    env = {"PATH": "/usr/bin:/bin", "VENV": sys.prefix, "EXPORT_DIR": str(tmp_path / "none"),
           "BUNDLE": str(tmp_path / "bundle")}  # fmt: skip
    result = subprocess.run([str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "model.pt" in result.stderr and "python -m training export" in result.stderr
    assert not (tmp_path / "bundle").exists()  # nothing half-made


# The comparison itself: equal answers pass, and each kind of difference is caught.

PREDICTION = {"Bag": 0.9, "Shirt": 0.05, "Coat": 0.03, "Dress": 0.01, "Sandal": 0.005}


def explanation(attributions, probability=0.9, target=8) -> dict:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 10).decode()
    return {"target": target, "target_name": "Bag", "probability": probability, "steps": 50,
            "delta": 0.0, "attributions": attributions, "heatmap_png": png}  # fmt: skip


def answers(prediction: dict, explained: dict, refusal_status: int = 400) -> dict:
    refusal = {"code": 400, "type": "invalid_image", "message": "not an image"}
    return {
        "predict": [{"name": "bag.png", "status": 200, "body": prediction}],
        "explain": [{"name": "bag.png", "status": 200, "body": explained}],
        "refused": [{"name": "not_an_image", "status": refusal_status, "body": refusal}],
    }


ATTRIBUTIONS = [[0.5, -0.25], [0.125, 0.0]]


def test_equal_answers_pass():
    reference = answers(PREDICTION, explanation(ATTRIBUTIONS))
    result = parity.compare(reference, json.loads(json.dumps(reference)), parity.FP32)
    assert result["passed"] and result["measured"]["attribution_min_cosine"] == 1.0


def without(name: str, **added: float) -> dict:
    return {**{k: v for k, v in PREDICTION.items() if k != name}, **added}


SHIRT_FIRST = {"Shirt": 0.9, "Bag": 0.05, "Coat": 0.03, "Dress": 0.01, "Sandal": 0.005}
DIFFERENCES = {
    "top1": (answers(SHIRT_FIRST, explanation(ATTRIBUTIONS)), "top-1"),
    "probability": (answers({**PREDICTION, "Shirt": 0.0502}, explanation(ATTRIBUTIONS)), "Shirt"),
    "class_dropped": (answers(without("Coat", Pullover=0.03), explanation(ATTRIBUTIONS)), "Coat"),
    "attribution": (answers(PREDICTION, explanation([[0.5, -0.25], [0.125, 0.01]])), "outside"),
    "target": (answers(PREDICTION, explanation(ATTRIBUTIONS, target=6)), "target"),
    "explained_probability": (
        answers(PREDICTION, explanation(ATTRIBUTIONS, probability=0.91)),
        "probability",
    ),
    "status": (answers(PREDICTION, explanation(ATTRIBUTIONS), refusal_status=500), "status"),
}


@pytest.mark.parametrize(("candidate", "problem"), DIFFERENCES.values(), ids=DIFFERENCES.keys())
def test_each_kind_of_difference_fails(candidate, problem):
    result = parity.compare(answers(PREDICTION, explanation(ATTRIBUTIONS)), candidate, parity.FP32)
    assert not result["passed"]
    assert any(problem in failure for failure in result["failures"]), result["failures"]


def test_a_near_tie_at_the_top_k_cut_off_may_swap():
    swapped = without("Sandal", Pullover=0.00502)  # Sandal was 0.005
    assert parity.compare_prediction(PREDICTION, swapped, tolerance=1e-4) == []


def test_rounding_to_four_significant_digits_is_within_fp32_tolerance():
    # 0.12345 rounds to 0.1234 on one side and 0.1235 on the other
    assert parity.compare(
        answers(PREDICTION, explanation([[0.1234, 0.15]])),
        answers(PREDICTION, explanation([[0.1235, 0.15]])),
        parity.FP32,
    )["passed"]
