"""benchmarks.profile_served: py-spy and JFR on a real TorchServe, and how their outputs are
read."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks import profile_served


def test_collapsed_stacks_give_each_frame_its_inclusive_share(tmp_path):
    raw = tmp_path / "worker.txt"
    raw.write_text("main;handle;forward 6\nmain;handle;decode 3\nmain;recv 1\n")
    shares = profile_served.collapsed_shares(raw)
    assert shares["samples"] == 10
    assert shares["inclusive_share"] == {
        "main": 1.0, "handle": 0.9, "forward": 0.6, "decode": 0.3, "recv": 0.1
    }  # fmt: skip


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "endpoint", "frame"),
    [([], "predictions", "TorchServeHandler.handle"),
     (["--explain"], "explanations (default method)", "ReluChain.integrated_gradients"),
     (["--method", "saliency"], "explanations (saliency)", "ReluChain.input_gradients")],
)  # fmt: skip
def test_profiles_a_real_torchserve_at_c1(export_dir, tmp_path, capsys, options, endpoint, frame):
    out = tmp_path / "profile"
    argv = ["--export-dir", str(export_dir), "--seconds", "2", "--warmup-max-s", "5", *options]
    assert profile_served.main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "profile.json").read_text())
    assert result["connections"] == 1 and result["endpoint"] == endpoint
    cpu = result["plain"]["cpu_ms_per_request"]
    assert result["plain"]["requests_per_s"] > 0 and cpu["frontend"] > 0
    workers = result["workers"]
    assert len(workers) == 2 and len(cpu) == 3  # the frontend and model-config's two workers
    for shares in workers.values():
        assert shares["samples"] > 0
        frames = shares["inclusive_share"]
        assert any(frame in name for name in frames)
        assert not any(re.search(r":\d+\)$", name) for name in frames)  # by function
    assert all(0 <= share <= 1 for share in result["plain"]["kernel_share"].values())
    frontend = result["frontend"]
    assert frontend["java_execution_samples"] == sum(frontend["top_java_frames"].values()) or (
        len(frontend["top_java_frames"]) == 10  # only the top ten are kept
    )
    assert (out / "frontend.jfr").stat().st_size > 0
    assert "CPU ms per request" in capsys.readouterr().out
