"""Integrated gradients written out for a chain of layers (fashion_serve.ig): the known answer on a
tiny chain, Captum's answer on the exported FashionCNN, and Captum where the model is no chain."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from fashion_serve import ig as fashion_ig
from fashion_serve.contract import load_torchscript
from fashion_serve.explain import attribute, black_baseline, gradient_model, integrated_gradients
from fashion_serve.ig import PathThreads, ReluChain

SHAPE = (1, 28, 28)


def scripted(model: nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.script(model.eval())


def positive_probe() -> nn.Module:
    """A 3x3 identity convolution, ReLU, and one linear score per class: for non-negative
    inputs the score is linear along the path from black, so IG is exact: x * w."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    linear = nn.Linear(28 * 28, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.linspace(-1, 1, 2 * 28 * 28).view(2, -1))
        linear.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear)


def test_the_chain_answers_the_known_attributions_with_zero_delta():
    model = positive_probe()
    chain = ReluChain.from_model(scripted(model), SHAPE, torch.device("cpu"))
    assert chain is not None
    inputs = torch.rand(3, *SHAPE)
    targets = [0, 1, 1]
    attributions, deltas = chain.integrated_gradients(inputs, torch.zeros(SHAPE), targets, 8)
    weights = model[3].weight.detach()
    expected = inputs * weights[targets].view(3, *SHAPE)
    assert torch.allclose(attributions, expected, atol=1e-5)
    assert deltas.abs().max() < 1e-4


@pytest.fixture(scope="module")
def exported(tiny_export_dir):
    model, contract = load_torchscript(tiny_export_dir / "model.pt")
    baseline = black_baseline(contract.mean, contract.std, tuple(contract.input_shape[1:]))
    return model.eval(), contract, baseline


def test_on_the_fashion_cnn_it_answers_as_captum_does(exported):
    model, contract, baseline = exported
    chain = ReluChain.from_model(model, contract.input_shape, torch.device("cpu"))
    assert chain is not None and chain.backward_dtype == torch.float32
    inputs = torch.randn(5, *contract.input_shape, generator=torch.Generator().manual_seed(1))
    targets = [0, 3, 9, 3, 1]
    expected, expected_deltas = integrated_gradients(
        gradient_model(model, torch.device("cpu")), inputs, baseline, targets, steps=20
    )
    attributions, deltas = chain.integrated_gradients(inputs, baseline, targets, steps=20)
    # Float rounding only: BatchNorm is folded and sums run in another order, which can flip
    # a ReLU whose input is within rounding of 0 at a path point: maps within 1e-7 of each
    # other, or up to a few 1e-3 where that happens. Wrong weights or steps would be O(1).
    relative = (attributions - expected).flatten(1).norm(dim=1) / expected.flatten(1).norm(dim=1)
    assert relative.max() < 1e-2, relative
    assert torch.allclose(deltas, expected_deltas, atol=1e-3)


def test_a_new_baseline_gets_its_own_logits(exported):
    model, contract, baseline = exported
    chain = ReluChain.from_model(model, contract.input_shape, torch.device("cpu"))
    inputs = torch.randn(2, *contract.input_shape, generator=torch.Generator().manual_seed(2))
    copy = gradient_model(model, torch.device("cpu"))
    for start in (baseline, baseline + 0.5, baseline):  # the chain keeps f(baseline)
        _, expected = integrated_gradients(copy, inputs, start, [4, 6], steps=10)
        _, deltas = chain.integrated_gradients(inputs, start, [4, 6], steps=10)
        assert torch.allclose(deltas, expected, atol=1e-3)


def test_bf16_gradients_stay_within_rounding_of_fp32(exported):
    model, contract, baseline = exported
    inputs = torch.randn(4, *contract.input_shape)
    chains = [
        ReluChain.from_model(model, contract.input_shape, torch.device("cpu"), bf16_backward=bf16)
        for bf16 in (False, True)
    ]
    assert chains[1].backward_dtype == torch.bfloat16
    (fp32, fp32_deltas), (bf16, bf16_deltas) = (
        chain.integrated_gradients(inputs, baseline, [2, 2, 5, 7], steps=16) for chain in chains
    )
    relative = (bf16 - fp32).flatten(1).norm(dim=1) / fp32.flatten(1).norm(dim=1)
    assert relative.max() < 0.01, relative
    assert (bf16_deltas - fp32_deltas).abs().max() < 0.01


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("bf16", [False, True])
def test_saliency_and_input_x_gradient_are_captums_in_fp32_on_any_chain(exported, method, bf16):
    model, contract, baseline = exported
    chain = ReluChain.from_model(
        model, contract.input_shape, torch.device("cpu"), bf16_backward=bf16
    )
    copy = gradient_model(model, torch.device("cpu"))
    inputs = torch.randn(3, *contract.input_shape, generator=torch.Generator().manual_seed(3))
    targets = [7, 0, 7]
    expected, _, _ = attribute(method, copy, model, inputs, baseline, targets, 0)  # Captum
    attributions, deltas, steps = attribute(
        method, copy, model, inputs, baseline, targets, 0, chain
    )
    assert deltas is None and steps is None
    # fp32 whichever backward dtype the chain's integrated gradients use: a bf16 backward
    # would be ~1e-3 off, the last of the answer's 4 significant digits.
    assert torch.allclose(attributions, expected, rtol=1e-4, atol=1e-6 * expected.abs().max())


class Residual(nn.Module):
    """The same layers as a chain, but the forward adds a skip: not a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(28 * 28, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(self.relu(self.conv(x)) + x))


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                      nn.Linear(2 * 14 * 14, 2)),
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(),
                      nn.Linear(2 * 14 * 14, 2)),
        nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2)),
        Residual(),
    ],
    ids=["strided-conv", "avg-pool", "no-conv-first", "residual"],
)  # fmt: skip
def test_models_that_are_no_chain_get_none_and_captum_explains_them(model):
    model = scripted(model)
    assert ReluChain.from_model(model, SHAPE, torch.device("cpu")) is None
    inputs = torch.rand(2, *SHAPE)
    copy = gradient_model(model, torch.device("cpu"))
    attributions, deltas, _ = attribute(
        "integrated_gradients", copy, model, inputs, torch.zeros(SHAPE), [0, 1], 8, chain=None
    )
    expected, _ = integrated_gradients(copy, inputs, torch.zeros(SHAPE), [0, 1], 8)
    assert torch.equal(attributions, expected) and deltas.shape == (2,)


def test_deltas_take_f_input_from_the_logits_given(exported):
    model, contract, baseline = exported
    chain = ReluChain.from_model(model, contract.input_shape, torch.device("cpu"))
    inputs = torch.randn(3, *contract.input_shape, generator=torch.Generator().manual_seed(3))
    targets = [1, 5, 8]
    _, computed = chain.integrated_gradients(inputs, baseline, targets, 10)
    with torch.inference_mode():
        logits = model(inputs)
    _, given = chain.integrated_gradients(inputs, baseline, targets, 10, logits)
    assert torch.allclose(given, computed, atol=1e-4)
    _, shifted = chain.integrated_gradients(inputs, baseline, targets, 10, logits + 1.0)
    assert torch.allclose(shifted, computed - 1.0, atol=1e-4)  # the logits given are used


@pytest.mark.parametrize(
    ("count", "steps", "passes"),
    [(1, 50, [2]), (3, 20, [2]), (2, 60, [3]), (1, 16, [2]), (1, 15, []), (1, 8, [])],
)
def test_path_threads_split_the_points_and_answer_the_same(exported, count, steps, passes):
    """One image's 50 points in two passes of 25, 3 x 20 points in two passes of 30 that
    span images, or 2 x 60 points in passes of POINTS_PER_PASS, run on the threads: the
    same sums in another order. 16 points split as 8 and 8; 15 or 8 stay one pass, on the
    caller's thread."""
    model, contract, baseline = exported
    chain = ReluChain.from_model(model, contract.input_shape, torch.device("cpu"))
    inputs = torch.randn(count, *contract.input_shape, generator=torch.Generator().manual_seed(4))
    targets = [7, 0, 2][:count]
    alone, alone_deltas = chain.integrated_gradients(inputs, baseline, targets, steps)
    with PathThreads(2) as threads:
        passes_run, ran_on = [], set()
        run = threads.map

        def recording_map(function, items):
            items = list(items)
            passes_run.append(len(items))

            def recorded(start):
                ran_on.add(threading.current_thread().name)
                return function(start)

            return run(recorded, items)

        threads.map = recording_map
        split, split_deltas = chain.integrated_gradients(
            inputs, baseline, targets, steps, None, threads
        )
    assert passes_run == passes  # [] where the points stay one pass
    assert all(name.startswith("fashion-ig") for name in ran_on) and bool(ran_on) == bool(passes)
    assert torch.allclose(split, alone, atol=1e-6, rtol=1e-5)
    assert torch.allclose(split_deltas, alone_deltas, atol=1e-5)


@pytest.mark.parametrize("torch_threads", [1, 3])
def test_path_threads_run_torch_on_the_workers_thread_count(torch_threads):
    """torch carries torch.set_num_threads over to new threads, which would otherwise take
    OMP_NUM_THREADS or one per core: the threads keep the worker's torch_threads."""
    torch.set_num_threads(torch_threads)  # keep_torch_threads puts it back
    with PathThreads(2) as threads:
        counts = list(threads.map(lambda _: torch.get_num_threads(), range(4)))
    assert counts == [torch_threads] * 4


def kinked_probe_paths(pixel_values: list[float]) -> tuple[ReluChain, torch.Tensor, torch.Tensor]:
    """positive_probe from a baseline of -0.5: each pixel's ReLU turns on part of the way
    along the path, at alpha = 0.5 / (x + 0.5), so the score is piecewise linear in alpha.
    One image per value, every pixel at it."""
    chain = ReluChain.from_model(scripted(positive_probe()), SHAPE, torch.device("cpu"))
    inputs = torch.tensor(pixel_values).view(-1, 1, 1, 1).expand(-1, *SHAPE).clone()
    return chain, inputs, torch.full(SHAPE, -0.5)


def test_steps_auto_gives_more_points_only_to_the_image_that_needs_them():
    # -1: below the baseline, no unit turns on along the path: the first points are exact;
    # 0.2: the units turn on at alpha 5/7, never a node: each halving brings delta closer.
    chain, inputs, baseline = kinked_probe_paths([-1.0, 0.2])
    tolerance = 1.0  # a gain of 78.4: |delta| 19.7 at 7 points, 6.4 at 15, 0.006 at 31
    attributions, deltas, points = chain.integrated_gradients_to_tolerance(
        inputs, baseline, [0, 0], tolerance, max_points=1000
    )
    assert points.tolist() == [7, 31]
    assert (deltas.abs() <= tolerance).all()
    # The known answer: (x - b) * w * the share of the path where the pixel is on.
    weight = positive_probe()[3].weight.detach()[0].view(SHAPE)
    on_share = torch.where(inputs > baseline, 1 - 0.5 / (inputs + 0.5), 0.0)
    expected = (inputs - baseline) * weight * on_share
    assert torch.allclose(attributions, expected, atol=0.01)
    # The image that needed more took the fewest halvings that meet the tolerance.
    _, fewer, _ = chain.integrated_gradients_to_tolerance(
        inputs[1:], baseline, [0], 0.0, max_points=int(points[1]) - 1
    )
    assert fewer.abs().item() > tolerance


def test_steps_auto_stops_at_the_cap_and_says_by_its_delta():
    chain, inputs, baseline = kinked_probe_paths([0.2])
    _, deltas, points = chain.integrated_gradients_to_tolerance(
        inputs, baseline, [0], 1e-6, max_points=40
    )
    assert points.tolist() == [31] and deltas.abs().item() > 1e-6  # 63 would pass the cap


def test_steps_auto_keeps_every_point_it_computed(exported):
    """Refining reuses the earlier points: 8 intervals halved once give the 15-point rule's
    attributions (16 intervals), computed afresh here."""
    model, contract, baseline = exported
    chain = ReluChain.from_model(model, contract.input_shape, torch.device("cpu"))
    inputs = torch.randn(2, *contract.input_shape)
    refined, _, points = chain.integrated_gradients_to_tolerance(inputs, baseline, [1, 7], 0.0, 15)
    assert points.tolist() == [15, 15]
    fresh = fashion_ig._Path(chain, inputs, baseline, [1, 7], None)
    t = torch.arange(1, 16) / 16
    alphas, weights = (1 - torch.cos(torch.pi * t)) / 2, torch.pi / 2 * torch.sin(torch.pi * t) / 16
    fresh.add(torch.arange(2).repeat_interleave(15), alphas.repeat(2), weights.repeat(2), None)
    assert torch.allclose(refined, fresh.attributions_and_deltas()[0], atol=1e-5)
