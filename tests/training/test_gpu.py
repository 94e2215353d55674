"""Training on CUDA (bf16/fp16 autocast) end to end, a few batches."""

import json

import pytest
import torch

from tests.training.idx_files import write_dataset
from training.__main__ import main


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dry_run_trains_and_exports_on_cuda(tmp_path):
    data_dir = write_dataset(tmp_path / "idx", n_train=600, n_test=200)
    common = ["--data-dir", str(data_dir)]
    assert (
        main(["train", *common, "--out", str(tmp_path / "t"), "--device", "cuda", "--dry-run"]) == 0
    )
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["epochs"] == 1
    export = ["export", *common, "--checkpoint", str(tmp_path / "t" / "best.pt")]
    assert main([*export, "--out", str(tmp_path / "e")]) == 0
