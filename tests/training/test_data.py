import gzip

import pytest
import torch

from tests.training.idx_files import idx_bytes, learnable_split, write_dataset, write_idx
from training import data


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_reads_what_was_written(tmp_path, gz):
    write_dataset(tmp_path, gz=gz, n_train=50, n_test=20)
    train = data.read_split(tmp_path, "train")
    images, labels = learnable_split(50, seed=0)
    assert train.images.shape == (50, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, images)
    assert torch.equal(train.labels, labels.long())
    assert len(data.read_split(tmp_path, "test")) == 20


def test_bad_magic_is_named(tmp_path):
    path = write_idx(tmp_path / "x.gz", data.LABELS_MAGIC, torch.zeros(5, 28, 28))
    with pytest.raises(data.IdxFormatError, match="bad magic number"):
        data.read_idx(path, data.IMAGES_MAGIC)


def test_truncated_data_is_refused(tmp_path):
    payload = idx_bytes(data.IMAGES_MAGIC, torch.zeros(10, 28, 28))
    path = tmp_path / "images"
    path.write_bytes(payload[:-100])
    with pytest.raises(data.IdxFormatError, match="truncated or corrupt"):
        data.read_idx(path, data.IMAGES_MAGIC)


def test_cut_off_gzip_is_refused(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(data.IMAGES_MAGIC, torch.zeros(10, 28, 28)))[:-30])
    with pytest.raises(data.IdxFormatError, match="cannot read"):
        data.read_idx(path, data.IMAGES_MAGIC)


def test_image_and_label_counts_must_agree(tmp_path):
    write_dataset(tmp_path, n_train=50)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", data.LABELS_MAGIC, torch.zeros(49))
    with pytest.raises(data.IdxFormatError, match="50 train images but 49 labels"):
        data.read_split(tmp_path, "train")


def test_explicit_dir_comes_before_env_and_others(tmp_path, monkeypatch):
    explicit = write_dataset(tmp_path / "explicit", n_train=30, n_test=10)
    from_env = write_dataset(tmp_path / "env", n_train=40, n_test=10)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(from_env))
    assert data.find_data_dir(explicit) == explicit
    assert data.find_data_dir(None) == from_env


def test_not_found_names_every_place_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(data.DatasetNotFoundError) as excinfo:
        data.load("train", tmp_path / "nowhere", allow_download=False)
    message = str(excinfo.value)
    for place in (tmp_path / "nowhere", data.cache_dir(), tmp_path / "debian"):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_download_verifies_checksums(tmp_path, monkeypatch):
    served = tmp_path / "mirror"
    served.mkdir()
    for stem in data.FILES_MD5:
        (served / f"{stem}.gz").write_bytes(b"not the real file")
    with pytest.raises(data.DatasetNotFoundError, match="checksum mismatch"):
        data.download(tmp_path / "cache", mirrors=(served.as_uri() + "/",))
    assert not list((tmp_path / "cache").glob("*.gz"))
