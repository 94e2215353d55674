"""The model's contract: what an exported model promises the code that serves it.

Training writes it inside the TorchScript file (as an extra file) and beside it; the
handler reads it back from the archive. Class names, input shape and normalization live
here and nowhere else.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import torch

CONTRACT_FILE = "contract.json"
# The name the model is served under unless told otherwise (shell scripts: MODEL_NAME).
DEFAULT_MODEL_NAME = "fashion-cnn"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class ModelContract:
    name: str
    version: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, of pixels scaled to [0, 1]
    std: tuple[float, ...]
    test_accuracy: float | None = None
    # Share of each class in the training labels, in class order; None in exports made
    # before it was recorded (then taken as uniform). The class-share drift alert uses it.
    class_prior: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values, one per input channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        if self.class_prior is not None:
            if len(self.class_prior) != self.num_classes:
                raise ValueError(f"class_prior needs {self.num_classes} values, one per class")
            if any(p < 0 for p in self.class_prior) or abs(sum(self.class_prior) - 1) > 1e-3:
                raise ValueError("class_prior must be non-negative shares that sum to 1")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prior(self) -> tuple[float, ...]:
        """The training class shares; uniform when the export did not record them."""
        if self.class_prior is not None:
            return self.class_prior
        return (1.0 / self.num_classes,) * self.num_classes

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelContract:
        fields = json.loads(text)
        for key in ("class_names", "input_shape", "mean", "std"):
            fields[key] = tuple(fields[key])
        if fields.get("class_prior") is not None:
            fields["class_prior"] = tuple(fields["class_prior"])
        return cls(**fields)


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch>=2.13's DeprecationWarning for torch.jit, and only that.

    TorchScript is deprecated upstream but it is what TorchServe 0.12's BaseHandler loads
    (a .pt2 from torch.export is not); until the serving stack moves, the warning tells a
    user nothing they can act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        yield


def save_torchscript(module: torch.jit.ScriptModule, path: Path, contract: ModelContract) -> None:
    with quiet_jit():
        torch.jit.save(module, str(path), _extra_files={CONTRACT_FILE: contract.to_json()})


def load_torchscript(
    path: Path | str | BinaryIO, map_location: str | torch.device | None = None
) -> tuple[torch.jit.ScriptModule, ModelContract]:
    """The module and its contract, from a file or a file object (e.g. read from an archive)."""
    extra_files = {CONTRACT_FILE: ""}
    source = path if hasattr(path, "read") else str(path)
    with quiet_jit():
        module = torch.jit.load(source, map_location=map_location, _extra_files=extra_files)
    if not extra_files[CONTRACT_FILE]:
        raise ValueError(
            f"{path} holds no {CONTRACT_FILE}: export it with `python -m training export`"
        )
    return module, ModelContract.from_json(extra_files[CONTRACT_FILE])
