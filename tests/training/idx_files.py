"""Write small synthetic FashionMNIST-shaped IDX files, gzipped or raw."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

from training.data import IMAGES_MAGIC, LABELS_MAGIC, SPLIT_PREFIX


def idx_bytes(magic: int, tensor: torch.Tensor) -> bytes:
    header = struct.pack(f">I{tensor.dim()}I", magic, *tensor.shape)
    return header + tensor.to(torch.uint8).numpy().tobytes()


def write_idx(path: Path, magic: int, tensor: torch.Tensor) -> Path:
    payload = idx_bytes(magic, tensor)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def learnable_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is readable from them: a bright row band at the label's height."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = torch.randint(0, 60, (n, 28, 28), generator=generator)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 230
    return images.to(torch.uint8), labels.to(torch.uint8)


def write_dataset(directory: Path, gz: bool = True, n_train: int = 600, n_test: int = 200) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = learnable_split(n, seed)
        prefix = SPLIT_PREFIX[split]
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", IMAGES_MAGIC, images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", LABELS_MAGIC, labels)
    return directory
