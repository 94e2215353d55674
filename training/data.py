"""FashionMNIST from its four IDX files, found locally or downloaded with checksums.

IDX is big-endian: a magic number (0x00000803 images, 0x00000801 labels), one int32 per
dimension, then the uint8 data. Files may be gzipped or raw.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
MIRRORS = (
    "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# MD5 of the official .gz files (Debian's are re-gzipped: same content, other checksums).
FILES_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
IMAGE_SIZE = 28
NUM_CLASSES = 10


class DatasetNotFoundError(FileNotFoundError):
    pass


class IdxFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashion-serve" / "fashion-mnist"


def candidate_dirs(data_dir: Path | None = None) -> list[Path]:
    """Where the files are looked for, in order."""
    dirs = [data_dir] if data_dir else []
    if os.environ.get("FASHION_MNIST_DIR"):
        dirs.append(Path(os.environ["FASHION_MNIST_DIR"]))
    return [*dirs, cache_dir(), DEBIAN_DIR]


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_data_dir(data_dir: Path | None = None) -> Path | None:
    for directory in candidate_dirs(data_dir):
        if all(_idx_file(directory, stem) for stem in FILES_MD5):
            return directory
    return None


def read_idx(path: Path, expected_magic: int) -> torch.Tensor:
    """Read one IDX file (gz or raw) into a uint8 tensor, checking magic and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these on corrupt or cut-off files
        raise IdxFormatError(f"{path}: cannot read ({e})") from e
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise IdxFormatError(
            f"{path}: bad magic number {magic:#010x}, expected {expected_magic:#010x}"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{path}: header cut off ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    count = 1
    for dim in shape:
        count *= dim
    if len(data) - header_size != count:
        raise IdxFormatError(
            f"{path}: header says {shape} ({count:,} bytes of data), "
            f"file holds {len(data) - header_size:,}: truncated or corrupt"
        )
    return torch.frombuffer(bytearray(data[header_size:]), dtype=torch.uint8).view(shape)


def read_split(directory: Path, split: str) -> Split:
    prefix = SPLIT_PREFIX[split]
    images = read_idx(_idx_file(directory, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
    labels = read_idx(_idx_file(directory, f"{prefix}-labels-idx1-ubyte"), LABELS_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise IdxFormatError(
            f"{directory}: {split} images are {tuple(images.shape[1:])}, not 28x28"
        )
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{directory}: {len(images):,} {split} images but {len(labels):,} labels"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise IdxFormatError(f"{directory}: {split} label {int(labels.max())} is not a class")
    return Split(images, labels.long())


def download(target: Path | None = None, mirrors: tuple[str, ...] = MIRRORS) -> Path:
    """Fetch the four .gz files into target (default: the cache), verifying MD5s."""
    target = target or cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    for stem, md5 in FILES_MD5.items():
        path = target / f"{stem}.gz"
        if path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() == md5:
            continue
        errors = []
        for mirror in mirrors:
            try:
                with urllib.request.urlopen(mirror + path.name, timeout=30) as response:
                    payload = response.read()
            except OSError as e:
                errors.append(f"{mirror}: {e}")
                continue
            if hashlib.md5(payload).hexdigest() != md5:
                errors.append(f"{mirror}: checksum mismatch")
                continue
            tmp = path.with_suffix(".part")
            tmp.write_bytes(payload)
            tmp.replace(path)
            break
        else:
            raise DatasetNotFoundError(f"could not download {path.name}: " + "; ".join(errors))
    return target


def locate(data_dir: Path | None = None, allow_download: bool | None = None) -> Path:
    """The directory holding the four files, downloading them if allowed.

    allow_download None means: download only when nothing is found locally.
    """
    found = None if allow_download else find_data_dir(data_dir)
    if found:
        return found
    if allow_download is False:
        raise _not_found(data_dir, "downloading was turned off")
    try:
        return download()
    except DatasetNotFoundError as e:
        raise _not_found(data_dir, str(e)) from e


def _not_found(data_dir: Path | None, why: str) -> DatasetNotFoundError:
    places = "\n".join(f"  - {d}" for d in candidate_dirs(data_dir))
    return DatasetNotFoundError(
        "FashionMNIST not found. Looked for its four IDX files (.gz or raw) in:\n"
        f"{places}\nand {why}.\nFix: `sudo apt-get install dataset-fashion-mnist`, or put the "
        "files in a folder and pass --data-dir DIR (or set FASHION_MNIST_DIR), or run "
        "`python -m training train --download` where the internet is reachable."
    )


def load(split: str, data_dir: Path | None = None, allow_download: bool | None = None) -> Split:
    return read_split(locate(data_dir, allow_download), split)
