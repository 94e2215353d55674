"""scripts/client.py, predict.sh and explain.sh against the running server, as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from fashion_serve.contract import FASHION_MNIST_CLASSES
from tests.e2e.e2e_helpers import REPO_ROOT, SAMPLES_DIR, assert_explanation, assert_prediction

pytestmark = pytest.mark.e2e

SAMPLE = SAMPLES_DIR / "trouser.png"


def run(args: list[str], run_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=REPO_ROOT,
        env={**os.environ, "RUN_DIR": str(run_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_client_predict_prints_a_topk_table(server_tiny):
    done = run(
        [sys.executable, "scripts/client.py", "predict", str(SAMPLE), "--topk", "3"],
        server_tiny.run_dir,
    )
    assert done.returncode == 0, done.stderr
    ranked = [line for line in done.stdout.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert len(ranked) == 3, done.stdout
    assert all(any(name in line for name in FASHION_MNIST_CLASSES) for line in ranked)


def test_client_explain_saves_the_heatmap(server_tiny, tmp_path):
    done = run(
        [
            sys.executable,
            "scripts/client.py",
            "explain",
            str(SAMPLE),
            "--target",
            "Bag",
            "--out-dir",
            str(tmp_path),
        ],
        server_tiny.run_dir,
    )
    assert done.returncode == 0, done.stderr
    assert "Bag (index 8" in done.stdout
    heatmap = tmp_path / "trouser.heatmap.png"
    assert str(heatmap) in done.stdout
    assert Image.open(heatmap).format == "PNG"


def test_client_explain_with_a_cheaper_method(server_tiny, tmp_path):
    command = [sys.executable, "scripts/client.py", "explain", str(SAMPLE), "--method",
               "occlusion", "--sign", "all", "--out-dir", str(tmp_path)]  # fmt: skip
    done = run(command, server_tiny.run_dir)
    assert done.returncode == 0, done.stderr
    assert "method: occlusion" in done.stdout
    assert Image.open(tmp_path / "trouser.heatmap.png").size == (340, 168)


def test_client_explain_with_steps_auto_says_whether_the_tolerance_was_met(server_tiny, tmp_path):
    command = [sys.executable, "scripts/client.py", "explain", str(SAMPLE), "--steps", "auto",
               "--delta-tolerance", "10", "--out-dir", str(tmp_path)]  # fmt: skip
    done = run(command, server_tiny.run_dir)
    assert done.returncode == 0, done.stderr
    assert "integrated gradients: 7 steps" in done.stdout
    assert ", within tolerance 10.0" in done.stdout


def test_client_reports_a_refused_file_and_exits_1(server_tiny):
    done = run(
        [sys.executable, "scripts/client.py", "predict", "README.md", str(SAMPLE)],
        server_tiny.run_dir,
    )
    assert done.returncode == 1
    assert "README.md: refused: HTTP 400" in done.stderr
    assert str(SAMPLE) in done.stdout  # the good file is still answered


def test_client_without_a_server_says_how_to_start_one(tmp_path):
    done = run([sys.executable, "scripts/client.py", "predict", str(SAMPLE)], tmp_path)
    assert done.returncode == 2
    assert "scripts/serve.sh start" in done.stderr


def test_predict_sh(server_tiny):
    done = run(["scripts/predict.sh", str(SAMPLE)], server_tiny.run_dir)
    assert done.returncode == 0, done.stderr
    assert_prediction(json.loads(done.stdout))
    done = run(["scripts/predict.sh", str(SAMPLE), "2"], server_tiny.run_dir)
    assert done.returncode == 0, done.stderr
    assert_prediction(json.loads(done.stdout), topk=2)


def test_explain_sh(server_tiny):
    done = run(["scripts/explain.sh", str(SAMPLE), "Dress"], server_tiny.run_dir)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert_explanation(answer)
    assert answer["target_name"] == "Dress"


def test_serve_status_reports_ready(server_tiny):
    done = run(["scripts/serve.sh", "status"], server_tiny.run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "workers: READY" in done.stdout


def test_predict_sh_without_a_server_says_how_to_start_one(tmp_path):
    done = run(["scripts/predict.sh", str(SAMPLE)], tmp_path)
    assert done.returncode == 1
    assert "scripts/serve.sh start" in done.stderr


def test_client_token_reads_either_key_and_is_empty_when_auth_is_off(tmp_path):
    token = [sys.executable, "scripts/client.py", "token", "--run-dir", str(tmp_path)]
    assert run(token, tmp_path).stdout == "\n"  # no key_file.json: nothing to send
    keys = {"inference": {"key": "inference-key"}, "management": {"key": "management-key"}}
    (tmp_path / "key_file.json").write_text(json.dumps(keys))
    assert run(token, tmp_path).stdout == "inference-key\n"
    assert run([*token, "--management"], tmp_path).stdout == "management-key\n"


def load_client():
    # Run as a script, client.py imports management_api from beside it.
    if str(REPO_ROOT / "scripts") not in sys.path:
        sys.path.append(str(REPO_ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("client", REPO_ROOT / "scripts" / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_client_takes_a_new_key_from_the_key_file_after_a_refusal(server_tiny):
    """A long-running caller whose key went stale (the server restarted, or a key expired
    and was renewed) tries once more with the key file's."""
    client_module = load_client()
    key_file = server_tiny.run_dir / "key_file.json"
    client = client_module.FashionClient(
        server_tiny.inference_url, "a-stale-key", server_tiny.model,
        client_module.key_file_renewal(key_file, None),
    )  # fmt: skip
    assert_prediction(client.predict(SAMPLE.read_bytes()))
    assert client.token == server_tiny.inference_token
    without_renewal = client_module.FashionClient(server_tiny.inference_url, "a-stale-key")
    with pytest.raises(client_module.ServerError) as refused:
        without_renewal.predict(SAMPLE.read_bytes())
    assert refused.value.is_token_refusal()


def test_an_expired_torchserve_key_is_renewed_with_the_api_key(torchserve_tiny):
    """TorchServe's keys expire (token_expiration_min): when the file's own key is refused,
    the client renews it on the management API with the file's API key."""
    client_module = load_client()
    key_file = torchserve_tiny.run_dir / "key_file.json"
    old = torchserve_tiny.inference_token
    renew = client_module.key_file_renewal(key_file, torchserve_tiny.management_url)
    new = renew(old)  # as after a refusal of the file's current key
    assert new and new != old and new == torchserve_tiny.inference_token
    assert_prediction(client_module.FashionClient(torchserve_tiny.inference_url, new).predict(
        SAMPLE.read_bytes()))  # fmt: skip
