"""benchmarks.load's wrk runs: the request wrk sends, and what it reports."""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.load import wrk

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk missing: scripts/test-tools.sh"
)


SEEN: list[tuple[str, dict, bytes]] = []  # the first requests: path, headers, body


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if len(SEEN) < 5:
            SEEN.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_wrk_posts_the_body_with_token_content_type_and_extra_headers(tmp_path):
    body = tmp_path / "body.png"
    body.write_bytes(b"\x89PNG not really")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/explanations/m"
        stats = wrk(url, body, token="secret", content_type="image/png", duration_s=1, cpu="none",
                    headers={"X-Method": "saliency", "X-Steps": "16"})  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert (
        stats["requests"] > 0
        and stats["non_2xx"] == 0
        and stats["codes"] == {"200": stats["requests"]}
    )
    path, headers, sent = SEEN[0]
    assert path == "/explanations/m" and sent == body.read_bytes()
    assert headers["Authorization"] == "Bearer secret"
    assert headers["Content-Type"] == "image/png"
    assert headers["X-Method"] == "saliency" and headers["X-Steps"] == "16"
