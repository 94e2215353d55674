"""Write one real FashionMNIST test image per class as PNG into samples/ (run once, kept in git).

    python -m benchmarks.make_samples --data-dir /usr/share/datasets/fashion-mnist --out samples

Each class's sample is the test image that a nearest-class-mean classifier separates best
from the other classes (closest to its own class's mean image, relative to the nearest other
class's mean), so that any reasonably trained model classifies it right; samples/index.json
records the label and the test-set index of every file.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from fashion_serve.contract import FASHION_MNIST_CLASSES
from training import data


def file_name(class_name: str) -> str:
    """'T-shirt/top' -> 't-shirt_top.png', 'Ankle boot' -> 'ankle_boot.png'."""
    return re.sub(r"[^a-z0-9-]+", "_", class_name.lower()) + ".png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=data.DEBIAN_DIR,
        help="folder with the test IDX files (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("samples"), help="default: %(default)s")
    args = parser.parse_args()

    test = data.read_split(args.data_dir, "test")
    images, labels = test.images.numpy(), test.labels.numpy()  # (N, 28, 28) uint8, (N,)
    args.out.mkdir(parents=True, exist_ok=True)
    index = {}
    pixels = images.reshape(len(images), -1).astype(np.float32)  # (N, 784)
    class_means = np.stack(
        [pixels[labels == label].mean(axis=0) for label in range(len(FASHION_MNIST_CLASSES))]
    )  # (10, 784)
    for label, class_name in enumerate(FASHION_MNIST_CLASSES):
        (members,) = np.nonzero(labels == label)
        distances = np.linalg.norm(pixels[members, None] - class_means[None], axis=2)  # (n, 10)
        own = distances[:, label]
        nearest_other = np.delete(distances, label, axis=1).min(axis=1)
        test_index = int(members[(own / nearest_other).argmin()])
        name = file_name(class_name)
        Image.fromarray(images[test_index], mode="L").save(args.out / name, optimize=True)
        index[name] = {"label": label, "class_name": class_name, "test_index": test_index}
    (args.out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {len(index)} samples to {args.out}")


if __name__ == "__main__":
    main()
