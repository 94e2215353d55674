"""python -m benchmarks.explain_quality: every setting measured in-process and served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.reliability


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing: scripts/test-tools.sh")
def test_every_setting_is_measured_in_process_and_each_handler_setting_served(
    tiny_export_dir, tmp_path
):
    out, table = tmp_path / "quality.json", tmp_path / "quality.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.explain_quality", "--export-dir", str(tiny_export_dir),
         "--images", "0", "--reference-steps", "8", "--seconds", "0.05", "--served",
         "--served-seconds", "1", "--concurrency", "1", "2", "--warmup-s", "1",
         "--warmup-max-s", "1", "--out", str(out), "--markdown", str(table)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = results["rows"]
    predictions = results["served_predictions_per_s"]
    assert set(predictions) == {"c1", "c2"} and all(rate > 0 for rate in predictions.values())
    assert sum(name.endswith("no heatmap") for name in rows) == 2
    assert {name.split(",")[0] for name in rows} == {
        "before: integrated_gradients", "integrated_gradients via Captum",
        "integrated_gradients in fp32", "integrated_gradients", "saliency", "input_x_gradient",
        "occlusion",
    }  # fmt: skip
    not_served = ("before", "integrated_gradients via", "integrated_gradients in")
    for name, row in rows.items():
        assert row["ms_per_image_batch_1"] > 0 and row["ms_per_image_batch_8"] > 0, name
        if name.startswith(not_served):  # not the handler as configured: nothing to serve
            assert "served_requests_per_s" not in row
        else:
            assert set(row["served_requests_per_s"]) == {"c1", "c2"}, name
            assert all(rate > 0 for rate in row["served_requests_per_s"].values()), name
        if "integrated_gradients" in name:
            assert row["delta_median"] <= row["delta_p95"]
    lines = table.read_text().splitlines()
    assert "served/s c1 | served/s c2 |" in lines[0]
    assert len(lines) == 2 + len(rows) + 2  # the table, a blank line, the costs over a prediction
    assert lines[-1].startswith("Served predictions/s") and "a ratio of" in lines[-1]
