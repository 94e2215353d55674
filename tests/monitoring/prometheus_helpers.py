"""A real Prometheus on a free loopback port, scraping with the shipped config, and queries
against its HTTP API. Used by the monitoring tests; skipped where Debian's `prometheus`
package (server and promtool) is not installed (scripts/test-tools.sh installs it)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.servers import REPO_ROOT, free_ports, http_call

MONITORING_DIR = REPO_ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING_DIR / "prometheus.yml"
RULES = MONITORING_DIR / "alerts.yml"
RULE_TESTS = MONITORING_DIR / "alerts.test.yml"
DASHBOARD = MONITORING_DIR / "grafana" / "dashboards" / "fashion-serve.json"
SCRAPE_INTERVAL = "1s"


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`, or skip the test with the reason."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.skip(f"{name} not installed: run scripts/test-tools.sh (Debian package prometheus)")
    return path


def local_config(metrics_port: int, out: Path) -> Path:
    """The shipped scrape config with its target on `metrics_port`, a 1 s scrape and rule
    interval, and the shipped rules by absolute path; written to `out`."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    config["rule_files"] = [str(MONITORING_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector (a list of {"metric": labels, "value": [t, v]})."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        status, body = http_call("GET", url, timeout=10)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed ({status}): {body[:300]!r}")
        return answer["data"]["result"]

    def values(self, expr: str, by: tuple[str, ...] = ()) -> dict:
        """{label values (tuple, in `by` order): float value} of an instant query."""
        return {
            tuple(sample["metric"].get(label, "") for label in by): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def wait_for(self, expr: str, expected, by: tuple[str, ...] = (), timeout_s: float = 30):
        """Poll until values(expr, by) == expected (expected None: until any value); returns
        the last values either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.values(expr, by)
            done = bool(got) if expected is None else got == expected
            if done or time.monotonic() > deadline:
                return got
            time.sleep(0.5)

    def rules(self) -> list[dict]:
        status, body = http_call("GET", f"{self.url}/api/v1/rules", timeout=10)
        assert status == 200, body[:300]
        return json.loads(body)["data"]["groups"]


@contextlib.contextmanager
def running_prometheus(metrics_port: int, work_dir: Path) -> Iterator[Prometheus]:
    """Prometheus scraping 127.0.0.1:metrics_port; always stopped (by its pid) on exit."""
    binary = tool("prometheus")
    work_dir.mkdir(parents=True, exist_ok=True)
    config = local_config(metrics_port, work_dir / "prometheus.yml")
    (port,) = free_ports(1)
    log = (work_dir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited ({process.returncode}):\n"
                    + (work_dir / "prometheus.log").read_text()[-2000:]
                )
            with contextlib.suppress(OSError):
                if http_call("GET", f"{url}/-/ready", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus not ready after 60 s")
            time.sleep(0.3)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
