"""benchmarks.gpu_proof end to end, from its bundle (CPU against CPU here, CUDA where there is
one), and the comparison that decides whether a device's answers equal the CPU's."""

from __future__ import annotations

import base64
import json
import sys

import pytest
import torch

from benchmarks import gpu_proof
from fashion_serve.service import Answer
from tests.support.parity import FP32
from tests.training.idx_files import write_dataset

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BAD_STATUSES = [400, 400, 400, 400, 422, 422, 422]  # gpu_proof.parity_batch's bad inputs


@pytest.fixture
def bundle(tiny_export_dir, tmp_path):
    idx_dir = write_dataset(tmp_path / "idx", n_train=600, n_test=200)
    args = ["--export-dir", str(tiny_export_dir), "--data-dir", str(idx_dir)]
    assert gpu_proof.main(["--make-bundle", str(tmp_path / "bundle"), *args]) == 0
    return tmp_path / "bundle"


@pytest.fixture
def restored_torch_threads():
    threads = torch.get_num_threads()  # the service and training each set their own
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("restored_torch_threads")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def test_the_proof_runs_from_its_bundle_and_checks_everything(
    device, bundle, tmp_path, monkeypatch, capsys
):
    assert sorted(p.name for p in (bundle / "data").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    ]  # fmt: skip
    assert (bundle / "export" / "model.pt").is_file()
    assert (bundle / "site" / "tqdm" / "__init__.py").is_file()
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = tmp_path / "out"
    sizes = ["--batch-sizes", "1", "4", "--explain-batch-sizes", "2", "--seconds", "0.05"]
    argv = ["--device", device, "--bundle", str(bundle), "--out", str(out), "--train-dry-run"]

    assert gpu_proof.main([*argv, *sizes]) == 0
    summary = json.loads((out / gpu_proof.SUMMARY_FILE).read_text())
    assert json.loads(capsys.readouterr().out) == summary  # the printed summary is the written one
    assert summary["passed"] and len(summary["checks"]) == 5 and all(summary["checks"].values())
    assert sys.path[-1] == str((bundle / "site").resolve())  # appended: the machine's own win

    parity = summary["parity"]
    assert torch.device(parity["service_device"]).type == device
    assert parity["integrated_gradients"] == "fashion_serve.ig"
    assert list(parity["statuses"].values()) == [200] * 21 + BAD_STATUSES  # 10 + 10 + 1 good
    for mode in ("fp32", "torch_defaults"):
        assert parity[mode]["failure_count"] == 0
        assert (
            parity[mode]["measured"]["probability_abs"]
            <= parity[mode]["tolerances"]["probability_abs"]
        )
    if device == "cpu":  # same code, same CPU
        assert parity["fp32"]["measured"]["probability_abs"] == 0.0

    speed = summary["speed"]
    for kind, sizes in (("run", {"batch_1", "batch_4"}), ("model", {"batch_1", "batch_4"}),
                        ("explain", {"batch_2"})):  # fmt: skip
        assert set(speed[kind]) == sizes
        assert all(f["images_per_s"] > 0 and f["calls"] >= 5 for f in speed[kind].values())
    assert speed["explain_steps"] == 50  # handler/model-config.yaml's default

    training = summary["training"]
    assert training["exit_code"] == 0 and training["dry_run"]
    assert 0.0 <= training["test_accuracy"] <= 1.0
    assert training["epoch_seconds"] > 0 and training["wall_seconds"] >= training["epoch_seconds"]


def test_a_bundle_without_a_model_says_how_to_make_one(tmp_path, caplog):
    argv = ["--make-bundle", str(tmp_path / "bundle"), "--export-dir", str(tmp_path)]
    assert gpu_proof.main(argv) == 2
    assert "python -m training export" in caplog.text
    assert not (tmp_path / "bundle").exists()  # nothing half-made


# The comparison itself: equal answers pass, and each kind of difference is caught.

PREDICTION = {"Bag": 0.9, "Shirt": 0.05, "Coat": 0.03, "Dress": 0.01, "Sandal": 0.005}
ATTRIBUTIONS = [[0.5, -0.25], [0.125, 0.0]]


def explanation(attributions=ATTRIBUTIONS, probability=0.9, target=8) -> dict:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 10).decode()
    return {"method": "integrated_gradients", "target": target, "target_name": "Bag",
            "probability": probability, "steps": 50, "delta": 0.0,
            "attributions": attributions, "heatmap_png": png}  # fmt: skip


def answers(prediction=PREDICTION, explained=None, refusal_status=400) -> list[Answer]:
    refusal = {"code": 400, "type": "invalid_image", "message": "not an image"}
    return [Answer(prediction), Answer(explained or explanation()),
            Answer(refusal, refusal_status)]  # fmt: skip


def compare(candidate: list[Answer], reference: list[Answer] | None = None) -> dict:
    names = ["predict", "explain", "refused"]
    return gpu_proof.compare(names, reference or answers(), candidate, FP32)


def test_equal_answers_pass():
    assert compare(answers())["passed"]


DIFFERENCES = {
    "top1": (answers({"Shirt": 0.9, **PREDICTION, "Bag": 0.05}), "top-1"),
    "probability": (answers({**PREDICTION, "Shirt": 0.0502}), "probabilities differ"),
    "class_missing": (answers({**PREDICTION, "Pullover": 0.0}), "classes"),
    "attribution": (answers(explained=explanation([[0.5, -0.25], [0.125, 0.01]])), "outside"),
    "target": (answers(explained=explanation(target=6)), "target"),
    "explained_probability": (answers(explained=explanation(probability=0.91)), "probabilit"),
    "status": (answers(refusal_status=500), "500"),
}


@pytest.mark.parametrize(("candidate", "problem"), DIFFERENCES.values(), ids=DIFFERENCES.keys())
def test_each_kind_of_difference_fails(candidate, problem):
    result = compare(candidate)
    assert not result["passed"]
    assert any(problem in failure for failure in result["failures"]), result["failures"]


def test_rounding_to_four_significant_digits_is_within_fp32_tolerance():
    # 0.12345 rounds to 0.1234 on one side and 0.1235 on the other
    reference = answers(explained=explanation([[0.1234, 0.15]]))
    assert compare(answers(explained=explanation([[0.1235, 0.15]])), reference)["passed"]
