"""How a benchmark variant is described (--set, --variant) and turned into server settings."""

from __future__ import annotations

import pytest
import yaml

from benchmarks.bench import parse_args, parse_overrides
from benchmarks.cli import config_with, handler_dir_with
from tests.support.servers import REPO_ROOT, model_config


def test_model_config_values_read_as_yaml_other_values_stay_strings():
    overrides, env = parse_overrides(
        ["batchSize=16", "handler.per_batch_logs=false", "config.netty_client_threads=4",
         "env.OMP_NUM_THREADS=2", "handler_source=/tmp/candidate", "maxBatchDelay="]
    )  # fmt: skip
    assert overrides == {
        "batchSize": 16,
        "handler.per_batch_logs": False,
        "config.netty_client_threads": "4",
        "handler_source": "/tmp/candidate",
        "maxBatchDelay": "",
    }
    assert env == {"OMP_NUM_THREADS": "2"}


def test_handler_copy_carries_the_overrides_and_leaves_the_repo_alone(tmp_path):
    before = (REPO_ROOT / "handler" / "model-config.yaml").read_text()
    handler_dir = handler_dir_with({"batchSize": 1, "handler.topk": 3}, tmp_path)
    config = model_config(handler_dir)
    assert config["batchSize"] == 1 and config["handler"]["topk"] == 3
    # every other key as in the repo's file
    repo = yaml.safe_load(before)
    assert config["minWorkers"] == repo["minWorkers"]
    assert config["handler"]["ig_steps"] == repo["handler"]["ig_steps"]
    assert (handler_dir / "fashion_handler.py").is_file()
    assert (REPO_ROOT / "handler" / "model-config.yaml").read_text() == before


def test_handler_source_copies_another_handler_folder(tmp_path):
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "model-config.yaml").write_text("batchSize: 4\n")
    (candidate / "fashion_handler.py").write_text("# a candidate\n")
    handler_dir = handler_dir_with({"handler_source": str(candidate)}, tmp_path / "work")
    assert (handler_dir / "fashion_handler.py").read_text() == "# a candidate\n"
    assert model_config(handler_dir) == {"batchSize": 4}


def test_config_properties_copy_replaces_and_adds_keys(tmp_path):
    path = config_with({"max_request_size": "2048", "job_queue_size": "50"}, tmp_path)
    lines = path.read_text().splitlines()
    assert [line for line in lines if line.startswith("max_request_size=")] == [
        "max_request_size=2048"
    ]
    assert "job_queue_size=50" in lines
    assert "inference_address=http://127.0.0.1:8080" in lines  # the rest kept


def test_skip_accepts_the_parts_and_nothing_else():
    assert parse_args(["--skip", "litserve", "in-process"]).skip == ["litserve", "in-process"]
    with pytest.raises(SystemExit):
        parse_args(["--skip", "lightserve"])
