"""The alert rules: valid for promtool, and their unit tests (monitoring/alerts.test.yml)
pass; the unit tests fail for rules whose thresholds are off, so they can catch a bad edit."""

from __future__ import annotations

import shutil
import subprocess

from tests.monitoring.prometheus_helpers import PROMETHEUS_CONFIG, RULE_TESTS, RULES, tool


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_rules_file_is_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid_and_loads_the_rules():
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_alert_unit_tests_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_catch_a_wrong_threshold(tmp_path):
    # The same tests against rules whose latency bound is 10x too lax must fail.
    lax = RULES.read_text().replace('{kind="prediction"} > 0.25', '{kind="prediction"} > 2.5')
    assert lax != RULES.read_text()
    (tmp_path / RULES.name).write_text(lax)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "FashionServeLatencyHigh" in result.stdout + result.stderr
