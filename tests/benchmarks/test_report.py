"""benchmarks.report: the targets and the Markdown table, from a run's results."""

from __future__ import annotations

import json

from benchmarks import report


def point(requests_per_s: float, p50_ms: float = 3.0) -> dict:
    return {
        "requests_per_s": requests_per_s, "requests": int(requests_per_s * 10),
        "p50_ms": p50_ms, "p95_ms": p50_ms * 2, "p99_ms": p50_ms * 3,
        "non_2xx": 0, "socket_errors": 0,
    }  # fmt: skip


def measured(images_per_s: float, p50_ms: float, batch_size: int = 1) -> dict:
    return {"images_per_s": images_per_s, "p50_ms_per_call": p50_ms, "batch_size": batch_size}


def results(litserve: bool = True) -> dict:
    run = {
        "concurrency": [1, 32],
        "machine": {"cpus": 2, "cpu_model": "Test CPU", "python": "3.11.7", "torch": "2.13.0"},
        "command": "python -m benchmarks.bench --duration 1",
        "load_average_at_end": [0.5, 0.4, 0.3],
        "in_process": {
            "batch_1": measured(1000, 1.0),
            "batch_8": measured(3000, 2.7, 8),
            "explain_batch_1": measured(20, 50.0),
            "ceiling": {"images_per_s": 5000, "processes": 2, "batch_size": 8},
            "explain_ceiling": {"images_per_s": 40, "processes": 2, "batch_size": 8},
        },
        "torchserve": {
            "predict": {"c1": point(300, 2.9), "c32": point(4100, 8.0)},
            "explain": {"c1": point(19, 50), "c32": point(30, 900)},
        },
    }
    if litserve:
        run["litserve"] = {
            "1 worker": {"predict": {"c1": point(380, 2.5), "c32": point(560)}},
            "2 workers": {"predict": {"c1": point(310), "c32": point(700)}},
        }
    return run


def verdicts(run: dict) -> dict[str, bool]:
    return {check["target"]: check["met"] for check in report.check_targets(run)}


def test_targets_compare_with_the_ceiling_the_one_image_time_and_the_best_peer():
    met = verdicts(results())
    assert met["served predictions at c32 >= 80% of ceiling"] is True  # 4100 / 5000
    assert met["p50 at c1 within 2.5 ms of in-process one image"] is True  # 2.9 - 1.0
    assert met["ahead of LitServe (best config) at c1"] is False  # 300 vs 380
    assert met["ahead of LitServe (best config) at c32"] is True  # 4100 vs 700
    # 30 / 40: against the ceiling of explanations, not one process at batch 1 (20)
    assert met["served explanations at c32 >= 90% of the in-process explanation ceiling"] is False


def test_a_missed_ceiling_is_reported_as_missed():
    run = results()
    run["torchserve"]["predict"]["c32"] = point(3000)
    assert verdicts(run)["served predictions at c32 >= 80% of ceiling"] is False


def test_targets_without_the_peer_skip_the_peer_comparisons():
    """--skip litserve: the run has no "litserve" results (was a KeyError after the run)."""
    met = verdicts(results(litserve=False))
    assert not any("LitServe" in target for target in met)
    assert "served predictions at c32 >= 80% of ceiling" in met


def test_targets_need_both_in_process_and_served_figures():
    run = results()
    del run["in_process"]
    assert report.check_targets(run) == []


def test_markdown_holds_command_machine_tables_and_verdicts():
    run = results()
    run["targets"] = report.check_targets(run)
    text = report.markdown(run)
    assert "`python -m benchmarks.bench --duration 1`" in text
    assert "2 cores (Test CPU)" in text and "torch 2.13.0" in text
    assert "| predict, batch 8 | 3000.0 | 2.70 |" in text
    assert "| TorchServe predict (PNG bytes) | 32 | 4100.0 | 8.00 |" in text
    assert "| LitServe 2 workers (JSON base64) | 32 | 700.0 |" in text
    assert "| ahead of LitServe (best config) at c1 | 300 vs 380 req/s | NO |" in text


def test_variants_show_their_explanations_when_they_loaded_them():
    run = results()
    run["variants"] = {"before": {"predict": {"c1": point(290)}, "explain": {"c1": point(9.5)}}}
    text = report.table(run)
    assert "| variant before | 1 | 290.0 |" in text
    assert "| variant before explain | 1 | 9.5 |" in text


def test_report_renders_a_saved_run(tmp_path):
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(results()))
    out = tmp_path / "bench.md"
    assert report.main([str(saved), "--markdown", str(out)]) == 0
    assert "| TorchServe explain (PNG bytes) | 1 | 19.0 |" in out.read_text()


def with_kserve(run: dict, c1_p50: float = 2.0, c32_rps: float = 1500, explain=(20, 31)) -> dict:
    run["kserve"] = {
        "predict": {"c1": point(450, c1_p50), "c32": point(c32_rps, 20.0)},
        "explain": {"c1": point(explain[0], 45), "c32": point(explain[1], 850)},
        "grpc": {"c1": point(200, 4.0), "c32": point(500, 60.0)},
    }
    run["kserve"]["predict"]["c1"]["cpu_ms_per_request"] = {"supervisor": 0.0, "workers": 2.5}
    return run


def test_kserve_targets_compare_with_litserves_best_and_torchserve_in_the_same_run():
    met = verdicts(with_kserve(results()))
    # p50 2.0 ms: below LitServe's best (2.5 ms, its 1-worker run) and TorchServe's 2.9 ms
    assert met["KServe runtime at c1: p50 below LitServe's best and below TorchServe's"] is True
    # 1500 req/s >= 2 x 700 (LitServe's best at c32)
    assert met["KServe runtime at c32: at least 2x LitServe's best"] is True
    # 20 >= 19 at c1 and 31 >= 30 at c32
    assert met["Explanations: no fewer per second than TorchServe's at c1 and c32"] is True


def test_kserve_targets_missed_by_the_figures():
    met = verdicts(with_kserve(results(), c1_p50=2.7, c32_rps=1399, explain=(20, 29)))
    assert met["KServe runtime at c1: p50 below LitServe's best and below TorchServe's"] is False
    assert met["KServe runtime at c32: at least 2x LitServe's best"] is False
    # one point short is a miss: 29 < 30 at c32
    assert met["Explanations: no fewer per second than TorchServe's at c1 and c32"] is False


def test_kserve_target_values_give_the_gap_to_torchserve():
    checks = {c["target"]: c["value"] for c in report.check_targets(with_kserve(results()))}
    value = checks["KServe runtime at c32: at least 2x LitServe's best"]
    assert value == "1500 vs 700 req/s = 2.14x; TorchServe 4100 (0.37x)"


def test_kserve_targets_need_the_peers_they_compare_with():
    run = with_kserve(results(litserve=False))
    del run["torchserve"]
    assert not any(target.startswith(("KServe", "Explanations")) for target in verdicts(run))


def test_kserve_rows_in_the_table():
    run = with_kserve(results())
    run["targets"] = report.check_targets(run)
    text = report.table(run)
    assert "| KServe runtime predict (PNG bytes) | 1 | 450.0 | 2.00 |" in text
    assert "| KServe runtime explain (PNG bytes) | 32 | 31.0 |" in text
    assert "| KServe runtime gRPC ModelInfer (Python tritonclient) | 32 | 500.0 |" in text
    # the supervisor in the frontend's column: it does no work per request
    assert "| 0 | 0.00 + 2.50 |" in text
    assert "| KServe runtime at c1: p50 below LitServe's best and below TorchServe's |" in text
