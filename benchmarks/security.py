"""Security checks: no call without the right token, no model registered from outside the
store (nor from it without the management token), every listening socket on loopback."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from urllib.parse import urlencode

from benchmarks.servers import MODEL_NAME, http_call

# Registration is on (scripts/serve.sh update), from the model store only: TorchServe must
# refuse each of these with the management token, before fetching or loading anything.
REGISTER_REFUSED = {
    "https URL": "https://example.com/fashion-cnn.mar",
    "file URL outside the store": "file:///etc/passwd",
    "file URL of an archive outside the store": "file:///tmp/evil/fashion-cnn.mar",
    "relative path with ..": f"../{MODEL_NAME}.mar",
    "archive name with ..": f"sub/../{MODEL_NAME}.mar",
    "archive not in the store": "no-such-model.mar",
}


def listening_sockets(pids: list[int]) -> list[str]:
    """'address:port' of every TCP socket in LISTEN state owned by these processes."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)  # 32-bit words in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.append(f"{address}:{int(port_hex, 16)}")
    return sorted(found)


def check_security(server, image, reference, args) -> dict:
    inference, management = server.inference_url, server.management_url
    token, mgmt_token = server.inference_token, server.management_token
    png = {"Content-Type": "application/octet-stream"}
    calls = {
        "predict, no token": ("POST", f"{server.predictions_url}", image, png),
        "explain, no token": ("POST", f"{server.explanations_url}", image, png),
        "predict v2, no token": ("POST", f"{inference}/v2/models/{MODEL_NAME}/infer", b"{}", {}),
        "predict, wrong token": (
            "POST", server.predictions_url, image, {**png, "Authorization": "Bearer not-the-key"},
        ),
        "predict, management token": (
            "POST", server.predictions_url, image, {**png, "Authorization": f"Bearer {mgmt_token}"},
        ),
        "list models, no token": ("GET", f"{management}/models", None, {}),
        "describe model, no token": ("GET", f"{management}/models/{MODEL_NAME}", None, {}),
        "scale workers, no token": ("PUT", f"{management}/models/{MODEL_NAME}?min_worker=4",
                                    None, {}),
        "unregister, no token": ("DELETE", f"{management}/models/{MODEL_NAME}", None, {}),
        "list models, inference token": (
            "GET", f"{management}/models", None, {"Authorization": f"Bearer {token}"},
        ),
        "models list on inference port, no token": ("GET", f"{inference}/models", None, {}),
    }  # fmt: skip
    refused = {}
    for name, (method, url, body, headers) in calls.items():
        status, _ = http_call(method, url, body, headers)
        refused[name] = status
    register = {}
    # A file: URL is refused even into the store: only a bare archive name is looked up there.
    into_store = {
        "file URL of the store's own archive": f"file://{server.model_store}/{MODEL_NAME}.mar"
    }
    for name, url in {**REGISTER_REFUSED, **into_store}.items():
        query = urlencode({"url": url, "model_name": "evil", "initial_workers": 1})
        status, _ = http_call(
            "POST", f"{management}/models?{query}", None, {"Authorization": f"Bearer {mgmt_token}"}
        )
        register[name] = status
    # Registration and unregistration need the management token like the rest of the API.
    store_name = f"url={MODEL_NAME}.mar&model_name=evil"
    for name, (method, url, headers) in {
        "register from the store, no token": ("POST", f"{management}/models?{store_name}", {}),
        "register from the store, inference token": (
            "POST", f"{management}/models?{store_name}", {"Authorization": f"Bearer {token}"},
        ),
        "unregister a version, no token": (
            "DELETE", f"{management}/models/{MODEL_NAME}/{server.describe()[0]['modelVersion']}",
            {},
        ),
    }.items():  # fmt: skip
        refused[name] = http_call(method, url, None, headers)[0]
    models = json.loads(
        http_call("GET", f"{management}/models", None, {"Authorization": f"Bearer {mgmt_token}"})[1]
    )
    names = sorted(m["modelName"] for m in models.get("models", []))
    pids = [server.frontend_pid(), *server.ready_worker_pids()]
    sockets = listening_sockets([pid for pid in pids if pid])
    loopback = all(ipaddress.ip_address(s.rsplit(":", 1)[0]).is_loopback for s in sockets)
    return {
        "passed": all(status == 400 for status in refused.values())
        and all(400 <= status < 500 for status in register.values())
        and names == [MODEL_NAME]
        and bool(sockets)
        and loopback,
        "refused_without_valid_token": refused,
        "register_attempts": register,
        "models_after": names,
        "listening": sockets,
        "all_loopback": loopback,
    }
