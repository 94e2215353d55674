import json
import shutil

import pytest
import torch

from fashion_serve.contract import FASHION_MNIST_CLASSES, load_torchscript
from tests.conftest import make_contract
from tests.training.idx_files import write_dataset
from training import data, export
from training import train as train_module
from training.__main__ import main
from training.model import FashionCNN
from training.train import augment, load_checkpoint, normalize, random_erase


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx"), n_train=600, n_test=200)


@pytest.fixture(scope="module")
def trained_dir(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    args = ["train", "--data-dir", str(dataset_dir), "--out", str(out), "--epochs", "2"]
    assert main([*args, "--val-size", "100", "--batch-size", "64", "--threads", "1"]) == 0
    return out


def test_training_writes_checkpoint_metrics_and_plots(trained_dir):
    metrics = json.loads((trained_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert set(metrics["per_class_accuracy"]) == set(FASHION_MNIST_CLASSES)
    assert metrics["train_seconds"] > 0
    assert metrics["precision"] in ("fp32", "bf16")  # auto, on a CPU
    # the synthetic classes are a bright band at the label's height: easy to learn
    assert metrics["test_accuracy"] > 0.5
    for name in ("best.pt", "last.pt", "confusion_matrix.png", "learning_curves.png"):
        assert (trained_dir / name).stat().st_size > 0
    _, state = load_checkpoint(trained_dir / "best.pt")
    assert len(state["history"]) == 2
    assert state["val_accuracy"] == max(row["val_accuracy"] for row in state["history"])


@pytest.mark.parametrize(
    "recipe",
    [
        ["--precision", "fp32"],
        ["--precision", "fp32", "--ema-decay", "0.9", "--erase-probability", "0.5"],
        ["--precision", "bf16"],
        ["--precision", "fp16"],  # its loss scale is restored too
    ],
    ids=["plain", "ema+erasing", "bf16", "fp16"],
)
def test_resume_after_an_interruption_matches_an_uninterrupted_run(
    dataset_dir, tmp_path, monkeypatch, recipe
):
    def run(out, *extra):
        argv = ["train", "--data-dir", str(dataset_dir), "--out", str(out), "--epochs", "2"]
        return main([*argv, "--val-size", "100", "--threads", "1", *recipe, *extra])

    assert run(tmp_path / "whole") == 0

    real_evaluate = train_module.evaluate
    calls = []

    def interrupt_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split")
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=False)["epoch"] == 1
    # Asked for another precision (as auto might pick on a busier day), the resumed part
    # keeps the one the run started in.
    other = "bf16" if "fp16" in recipe else "fp16"
    resume = ["--resume", str(tmp_path / "split" / "last.pt"), "--precision", other]
    assert run(tmp_path / "split", *resume) == 0

    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    for key in ("model_state", "train_model_state"):
        for name, tensor in whole.get(key, {}).items():
            assert torch.equal(tensor, resumed[key][name]), (key, name)


def test_explicit_precision_is_taken_as_given():
    cpu = torch.device("cpu")
    model = FashionCNN()
    assert train_module.autocast_dtype("fp32", cpu, model, 8) is None
    assert train_module.autocast_dtype("bf16", cpu, model, 8) is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        train_module.autocast_dtype("fp8", cpu, model, 8)


@pytest.mark.parametrize(
    ("native_bf16", "bf16_step_s", "expected"),
    [(False, 0.01, None), (True, 0.01, torch.bfloat16), (True, 0.018, None), (True, 0.03, None)],
    ids=["no-native-bf16", "bf16-clearly-faster", "within-the-margin", "bf16-slower"],
)
def test_auto_precision_on_a_cpu_takes_bf16_only_when_clearly_faster(
    monkeypatch, native_bf16, bf16_step_s, expected
):
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native_bf16)
    step_s = {None: 0.02, torch.bfloat16: bf16_step_s}
    monkeypatch.setattr(train_module, "step_seconds", lambda model, size, dtype: step_s[dtype])
    dtype = train_module.autocast_dtype("auto", torch.device("cpu"), FashionCNN(), 8)
    assert dtype is expected


def test_fp16_scales_its_loss(dataset_dir, tmp_path):
    argv = ["train", "--data-dir", str(dataset_dir), "--out", str(tmp_path), "--epochs", "1"]
    assert main([*argv, "--val-size", "100", "--threads", "1", "--precision", "fp16"]) == 0
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert last["precision"] == "fp16" and last["scaler_state"]["scale"] > 0


def test_step_timing_leaves_the_model_and_random_state_alone():
    model = FashionCNN().to(memory_format=torch.channels_last)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert train_module.step_seconds(model, 16, torch.bfloat16) > 0
    assert all(torch.equal(weights[name], t) for name, t in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_evaluate_writes_its_own_file_and_keeps_the_training_metrics(
    trained_dir, dataset_dir, tmp_path
):
    shutil.copy(trained_dir / "best.pt", tmp_path)
    # A figure only the training run could have written, to see that it survives.
    training_metrics = dict(json.loads((trained_dir / "metrics.json").read_text()))
    training_metrics["peak_memory_mb"] = 12345
    (tmp_path / "metrics.json").write_text(json.dumps(training_metrics))

    argv = ["evaluate", "--checkpoint", str(tmp_path / "best.pt"), "--data-dir", str(dataset_dir)]
    assert main(argv) == 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == training_metrics
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["test_accuracy"] == training_metrics["test_accuracy"]
    # The evaluating process's memory says nothing about training's: it is not reported.
    assert "peak_memory_mb" not in evaluation


def test_best_checkpoint_keeps_the_best_epochs_weights(dataset_dir, tmp_path, monkeypatch):
    real_evaluate = train_module.evaluate
    weights_after_epoch = []

    def first_epoch_is_best(model, *args):
        weights_after_epoch.append({k: v.clone() for k, v in model.state_dict().items()})
        loss, _, predicted = real_evaluate(model, *args)
        return loss, 1.0 / len(weights_after_epoch), predicted

    monkeypatch.setattr(train_module, "evaluate", first_epoch_is_best)
    config = train_module.TrainConfig(epochs=2, batch_size=64, val_size=100)
    split = data.read_split(dataset_dir, "train")
    train_module.train(split, config, tmp_path, torch.device("cpu"))

    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] == 1
    for name, tensor in best["model_state"].items():
        assert torch.equal(tensor, weights_after_epoch[0][name]), name


def test_dry_run_runs_a_few_batches(dataset_dir, tmp_path):
    assert main(["train", "--data-dir", str(dataset_dir), "--out", str(tmp_path), "--dry-run"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 1


def test_export_round_trips_the_contract_and_matches_eager(trained_dir, dataset_dir, tmp_path):
    argv = ["export", "--checkpoint", str(trained_dir / "best.pt"), "--out", str(tmp_path)]
    assert main([*argv, "--data-dir", str(dataset_dir), "--version", "2.1"]) == 0
    scripted, contract = load_torchscript(tmp_path / export.MODEL_FILE)
    metrics = json.loads((trained_dir / "metrics.json").read_text())
    eager, state = load_checkpoint(trained_dir / "best.pt")
    assert contract.class_names == FASHION_MNIST_CLASSES
    assert contract.input_shape == (1, 28, 28)
    assert contract.mean == (state["mean"],) and contract.std == (state["std"],)
    assert contract.version == "2.1" and contract.test_accuracy == metrics["test_accuracy"]
    train_labels = data.read_split(dataset_dir, "train").labels
    shares = torch.bincount(train_labels, minlength=10).double() / len(train_labels)
    assert contract.class_prior == pytest.approx(shares.tolist(), abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # the contract is inside
    batch = normalize(data.read_split(dataset_dir, "test").images[:32], state["mean"], state["std"])
    with torch.inference_mode():
        assert torch.allclose(scripted(batch), eager(batch), atol=1e-5)


def test_export_fails_when_parity_is_broken(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # no difference can pass
    with pytest.raises(export.ParityError, match="differ from eager"):
        export.export_model(FashionCNN(), make_contract(), tmp_path, torch.randn(2, 1, 28, 28))


def test_augment_only_flips_and_shifts():
    torch.manual_seed(0)
    background = -1.0
    batch = torch.rand(16, 1, 28, 28)
    out = augment(batch, torch.Generator().manual_seed(1), background)
    assert out.shape == batch.shape
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2), value=background)
    for original, augmented in zip(padded, out, strict=True):
        candidates = [
            image[:, dy : dy + 28, dx : dx + 28]
            for image in (original, original.flip(-1))
            for dy in range(5)
            for dx in range(5)
        ]
        assert any(torch.equal(augmented, c) for c in candidates)


def test_random_erase_blacks_out_one_rectangle_per_chosen_image():
    batch = torch.rand(64, 1, 28, 28) + 1.0  # nothing equals the background before
    background = -1.0
    out = random_erase(batch, torch.Generator().manual_seed(0), 1.0, background)
    for image in out[:, 0]:
        erased = image == background
        rows, cols = erased.any(dim=1).nonzero(), erased.any(dim=0).nonzero()
        height, width = len(rows), len(cols)
        assert erased.sum() == height * width  # one solid rectangle
        assert 0.02 * 784 * 0.5 <= height * width <= 0.2 * 784 * 1.5  # its area, rounded
    untouched = random_erase(batch, torch.Generator().manual_seed(0), 0.0, background)
    assert torch.equal(untouched, batch)


def test_moving_average_is_what_the_checkpoint_keeps(dataset_dir, tmp_path):
    argv = ["train", "--data-dir", str(dataset_dir), "--out", str(tmp_path), "--epochs", "1"]
    assert main([*argv, "--val-size", "100", "--threads", "1", "--ema-decay", "0.99"]) == 0
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    trained, averaged = last["train_model_state"], last["model_state"]
    weight = "features.0.0.weight"
    assert not torch.equal(trained[weight], averaged[weight])  # the average lags the weights
    model, _ = load_checkpoint(tmp_path / "best.pt")  # export and evaluate load the average
    assert torch.equal(model.state_dict()[weight], averaged[weight])


@pytest.mark.slow
def test_one_short_epoch_on_real_data_learns(tmp_path):
    if data.find_data_dir() is None:
        pytest.skip("real FashionMNIST not found (apt-get install dataset-fashion-mnist)")
    args = ["train", "--out", str(tmp_path), "--epochs", "1", "--train-subset", "8000"]
    assert main([*args, "--val-size", "1000", "--no-download"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.70  # chance is 0.10
