"""Model outputs -> the JSON TorchServe's image_classifier users expect."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fashion_serve.contract import quiet_jit

PROBABILITY_DECIMALS = 6


def top_k_batch(
    probabilities: torch.Tensor, class_names: Sequence[str], ks: Sequence[int]
) -> list[dict[str, float]]:
    """(N, C) probabilities and one k per example -> one {class name: probability} object
    per example for its k most likely, highest first (a JSON object keeps this order).

    One topk call and one device-to-host copy for the whole batch, at the largest k.
    """
    largest = max(ks)
    values, indices = torch.topk(probabilities, largest, dim=1)
    values, indices = values.tolist(), indices.tolist()
    return [
        {
            class_names[index]: round(value, PROBABILITY_DECIMALS)
            for value, index in zip(row_values[:k], row_indices[:k], strict=True)
        }
        for row_values, row_indices, k in zip(values, indices, ks, strict=True)
    ]


def inference_model(model: torch.jit.ScriptModule, device: torch.device) -> torch.jit.ScriptModule:
    """The model to predict with: on CPU a frozen copy with BatchNorm folded into the
    convolutions and oneDNN layouts (torch.jit.optimize_for_inference): faster on CPU
    (docs/performance.md), with the same outputs within float rounding
    (tests/handler/test_fashion_predict.py). It records no gradients: explanations use
    their own copy (fashion_serve.explain.gradient_model) or fashion_serve.ig's chain. On
    other devices `model` is returned unchanged."""
    if device.type != "cpu":
        return model
    with quiet_jit():
        return torch.jit.optimize_for_inference(torch.jit.freeze(model.eval()))
