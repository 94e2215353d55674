"""Call the fashion-cnn server (either runtime): top-k predictions or explanations.

    python scripts/client.py predict samples/ankle_boot.png samples/bag.png --topk 3
    python scripts/client.py explain samples/ankle_boot.png --target Sandal --out-dir run/heatmaps

URLs and tokens come from the run directory that `scripts/serve.sh start` filled
(endpoints.json, key_file.json; default run/, or $RUN_DIR), or from the flags.
Exit status: 0 if every file was answered, 1 if any request was refused, 2 on usage or
connection errors.

The shell scripts ask it for what those two files hold instead of parsing them:
    python scripts/client.py url predictions      # the model's predictions URL (call.sh)
    python scripts/client.py token [--management] # the key; empty without a key file
    python scripts/client.py endpoints            # endpoints.json as "name: value" lines
    python scripts/client.py workers              # the model's worker states (serve.sh)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable
from http.client import responses
from pathlib import Path

import requests
from management_api import ManagementApi, ManagementError, auth_header, call, read_keys, renew_key

from fashion_serve.contract import DEFAULT_MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_DIR = Path(os.environ.get("RUN_DIR", REPO_ROOT / "run"))
DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 60


class ClientError(Exception):
    """A problem the user fixes on their side: no server, no token, unreadable file."""


class ServerError(Exception):
    """The server refused a request: its {"code", "type", "message"} body, or the HTTP status."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(status, error_type, message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.error_type}: {self.message}"

    def is_token_refusal(self) -> bool:
        """A missing, wrong or expired token: TorchServe's 400, the kserve runtime's 401."""
        refusals = ((400, "InvalidKeyException"), (401, "Unauthorized"))
        return (self.status, self.error_type) in refusals


def key_file_renewal(key_file: Path, management_url: str | None):
    """A FashionClient's renew_token over a server's key file: the file's inference key when
    it differs from the refused one (the server restarted, or someone renewed it); else, on
    TorchServe, a renewal with the file's API key (GET /token?type=inference on the
    management API, which rewrites the file: keys expire after token_expiration_min)."""

    def renew(refused: str | None) -> str | None:
        try:
            current = read_keys(key_file).get("inference", {}).get("key")
            if current and current != refused:
                return current
            if not management_url:
                return None  # the kserve runtime: its keys never expire
            return renew_key(management_url, key_file, "inference", TIMEOUT_S)
        except (OSError, ValueError):  # no key file, or no answer
            return None

    return renew


def read_token(key_file: Path, api: str = "inference") -> str:
    """The `api` ("inference" or "management") key from TorchServe's key_file.json."""
    try:
        keys = read_keys(key_file)
    except FileNotFoundError as exc:
        raise ClientError(
            f"no token file at {key_file}: start the server with 'scripts/serve.sh start' "
            "or pass --token / --key-file"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read the token file {key_file}: {exc}") from exc
    try:
        return keys[api]["key"]
    except (KeyError, TypeError) as exc:
        raise ClientError(f"{key_file} has no {api} key (keys: {sorted(keys)})") from exc


def read_token_if_any(key_file: Path, api: str = "inference") -> str | None:
    """Like read_token, but None without a key file: token authorization is off."""
    return read_token(key_file, api) if key_file.exists() else None


def read_endpoints(run_dir: Path) -> dict:
    """endpoints.json written by serve.sh, or {} if the run dir has none."""
    try:
        return json.loads((run_dir / "endpoints.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read {run_dir / 'endpoints.json'}: {exc}") from exc


def require_endpoints(run_dir: Path) -> dict:
    """endpoints.json written by serve.sh; a ClientError saying how to get one if missing."""
    endpoints = read_endpoints(run_dir)
    if not endpoints:
        raise ClientError(
            f"no {run_dir}/endpoints.json: start the server with 'scripts/serve.sh start'"
        )
    return endpoints


def model_readiness(inference_url: str, model: str, token: str | None) -> list[str]:
    """["READY"] when the kserve runtime says the model is ready (OIP's GET
    /v2/models/{m}/ready; its workers share one port), else ["NOT_READY"]."""
    url = f"{inference_url.rstrip('/')}/v2/models/{model}/ready"
    try:
        status, body = call("GET", url, token, timeout_s=5)
    except OSError as exc:
        raise ClientError(f"no server at {inference_url}") from exc
    if status not in (200, 503):
        raise ServerError(status, responses.get(status, "?"), f"{body}"[:200])
    return ["READY" if status == 200 and body.get("ready") else "NOT_READY"]


def worker_states(management_url: str, model: str, key_file: Path) -> list[str]:
    """The status ("READY", "UNLOADING", ...) of each worker of the model's default version,
    asked with the key file's management key (renewed if it has expired)."""
    api = ManagementApi(management_url, model, key_file, timeout_s=5)
    try:
        status, described = api.call("GET", f"/models/{model}")
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read the token file {key_file}: {exc}") from exc
    except ManagementError as exc:  # nothing answers
        raise ClientError(str(exc)) from exc
    if status != 200:
        raise ServerError(status, responses.get(status, "?"), f"{described}"[:200])
    return [worker["status"] for version in described for worker in version.get("workers", [])]


class FashionClient:
    """Thin wrapper over the inference API: one image per request, JSON answers."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        model: str = DEFAULT_MODEL_NAME,
        renew_token: Callable[[str | None], str | None] | None = None,
    ):
        """`renew_token(refused_token)` returns a token to try once more after a token
        refusal (e.g. key_file_renewal: the key file's, renewed first where it expired), or
        None; without it a refusal is raised."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.session = requests.Session()
        self.token = token
        self.renew_token = renew_token
        self._use(token)

    def _use(self, token: str | None) -> None:
        self.token = token
        self.session.headers.pop("Authorization", None)
        self.session.headers.update(auth_header(token))

    def predict(self, image_bytes: bytes, topk: int | None = None) -> dict[str, float]:
        """{class_name: probability}, highest first."""
        return self._post(f"/predictions/{self.model}", image_bytes, {"topk": topk})

    def explain(
        self,
        image_bytes: bytes,
        target: str | int | None = None,
        method: str | None = None,
        sign: str | None = None,
        steps: int | str | None = None,
        delta_tolerance: float | None = None,
    ) -> dict:
        """{"method", "target", "target_name", "probability", "steps", "delta",
        "attributions", "heatmap_png"} for the given class (index or name), else the
        predicted one; `method`, `sign`, `steps` (a count or "auto") and `delta_tolerance`
        as in docs/api.md (server defaults if None)."""
        options = {"target": target, "method": method, "sign": sign, "steps": steps,
                   "delta_tolerance": delta_tolerance}  # fmt: skip
        return self._post(f"/explanations/{self.model}", image_bytes, options)

    def _post(self, path: str, image_bytes: bytes, options: dict):
        try:
            return self._post_once(path, image_bytes, options)
        except ServerError as error:
            if not (error.is_token_refusal() and self.renew_token):
                raise
            fresh = self.renew_token(self.token)
            if not fresh or fresh == self.token:
                raise
            self._use(fresh)
            return self._post_once(path, image_bytes, options)

    def _post_once(self, path: str, image_bytes: bytes, options: dict):
        # A multipart upload: TorchServe 0.12 drops query parameters before the handler,
        # form fields reach it.
        fields = {key: str(value) for key, value in options.items() if value is not None}
        url = self.base_url + path
        try:
            response = self.session.post(
                url,
                files={"data": ("image", image_bytes, "application/octet-stream")},
                data=fields,
                timeout=TIMEOUT_S,
            )
        except requests.ConnectionError as exc:
            raise ClientError(
                f"no server at {self.base_url}: start it with 'scripts/serve.sh start'"
            ) from exc
        if response.ok:
            return response.json()
        try:
            body = response.json()
            raise ServerError(response.status_code, body.get("type", "?"), body.get("message", ""))
        except (ValueError, AttributeError):
            raise ServerError(response.status_code, response.reason, response.text[:200]) from None


def print_prediction(path: Path, probabilities: dict[str, float]) -> None:
    print(f"{path}")
    for rank, (class_name, probability) in enumerate(probabilities.items(), start=1):
        bar = "#" * round(probability * 30)
        print(f"  {rank}. {class_name:<12} {probability:7.2%}  {bar}")


def save_heatmap(explanation: dict, image_path: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    heatmap_path = out_dir / f"{image_path.stem}.heatmap.png"
    heatmap_path.write_bytes(base64.b64decode(explanation["heatmap_png"]))
    return heatmap_path


def print_explanation(path: Path, explanation: dict, heatmap_path: Path) -> None:
    print(f"{path}")
    print(
        f"  explained class: {explanation['target_name']} (index {explanation['target']}, "
        f"probability {explanation['probability']:.2%})"
    )
    method = explanation.get("method", "integrated_gradients").replace("_", " ")
    if explanation.get("delta") is None:
        print(f"  method: {method}")
    else:
        met = {True: ", within", False: ", NOT within"}.get(explanation.get("converged"), "")
        tolerance = f" tolerance {explanation['delta_tolerance']}" if met else ""
        print(
            f"  {method}: {explanation['steps']} steps, "
            f"convergence delta {explanation['delta']:.2e}{met}{tolerance}"
        )
    print(f"  heatmap saved to {heatmap_path}")


def parse_target(text: str | None) -> str | int | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="serve.sh run dir (default: $RUN_DIR, else run/)",
    )
    server.add_argument("--url", help="inference base URL (default: from the run dir, else 8080)")
    server.add_argument("--model", default=None, help=f"model name (default: {DEFAULT_MODEL_NAME})")
    server.add_argument("--key-file", type=Path, help="key_file.json (default: in the run dir)")
    images = argparse.ArgumentParser(add_help=False, parents=[server])
    images.add_argument("files", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    images.add_argument("--token", help="inference token (default: from the key file)")

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", parents=[images], help="top-k classes per image")
    predict.add_argument("--topk", type=int, default=None, help="classes per prediction")
    explain = commands.add_parser("explain", parents=[images], help="integrated gradients")
    explain.add_argument("--target", help="class to explain, index or name (default: predicted)")
    explain.add_argument(
        "--method",
        help="integrated_gradients (default), saliency, input_x_gradient or occlusion",
    )
    explain.add_argument("--sign", help="heatmap: positive (default) or all")
    explain.add_argument("--steps", help="integrated-gradients steps, or auto (default: server's)")
    explain.add_argument(
        "--delta-tolerance",
        type=float,
        help="with --steps auto (default: the server's, 0.15 as shipped)",
    )
    explain.add_argument(
        "--out-dir", type=Path, default=None, help="where heatmaps go (default: RUN_DIR/heatmaps)"
    )
    url = commands.add_parser("url", parents=[server], help="the model's URL for a route")
    url.add_argument("route", choices=("predictions", "explanations"))
    token = commands.add_parser("token", parents=[server], help="the key (empty if auth is off)")
    token.add_argument("--management", action="store_true", help="the management API's key")
    commands.add_parser("endpoints", parents=[server], help="endpoints.json, one a line")
    commands.add_parser(
        "workers", parents=[server], help="the model's worker states (kserve runtime: READY or not)"
    )
    return parser


def print_server_facts(args: argparse.Namespace) -> None:
    """The url, token, endpoints and workers commands: what the shell scripts ask for."""
    key_file = args.key_file or args.run_dir / "key_file.json"
    if args.command == "url":
        endpoints = {} if args.url else require_endpoints(args.run_dir)
        base_url = (args.url or endpoints["inference"]).rstrip("/")
        print(f"{base_url}/{args.route}/{args.model or endpoints.get('model', DEFAULT_MODEL_NAME)}")
    elif args.command == "token":
        print(read_token_if_any(key_file, "management" if args.management else "inference") or "")
    elif args.command == "endpoints":
        for name, value in require_endpoints(args.run_dir).items():
            print(f"{name}: {value}")
    else:
        endpoints = require_endpoints(args.run_dir)
        model = args.model or endpoints.get("model", DEFAULT_MODEL_NAME)
        if endpoints.get("runtime") == "kserve":
            token = read_token_if_any(key_file, "inference")
            print(" ".join(model_readiness(endpoints["inference"], model, token)))
        else:
            print(" ".join(worker_states(endpoints["management"], model, key_file)))


def send_images(args: argparse.Namespace) -> int:
    """The predict and explain commands; returns how many files the server refused."""
    endpoints = read_endpoints(args.run_dir)
    key_file = args.key_file or args.run_dir / "key_file.json"
    token = args.token or read_token(key_file)
    client = FashionClient(
        args.url or endpoints.get("inference", DEFAULT_URL),
        token,
        args.model or endpoints.get("model", DEFAULT_MODEL_NAME),
        # An explicit --token is used as given; the key file's is renewed when it expires.
        None if args.token else key_file_renewal(key_file, endpoints.get("management")),
    )
    refused = 0
    for path in args.files:
        try:
            image_bytes = path.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            if args.command == "predict":
                print_prediction(path, client.predict(image_bytes, args.topk))
            else:
                explanation = client.explain(
                    image_bytes, parse_target(args.target), args.method, args.sign,
                    args.steps, args.delta_tolerance,
                )  # fmt: skip
                out_dir = args.out_dir or args.run_dir / "heatmaps"
                heatmap_path = save_heatmap(explanation, path, out_dir)
                print_explanation(path, explanation, heatmap_path)
        except ServerError as error:
            refused += 1
            hint = ""
            if error.is_token_refusal():
                hint = " (pass this server's key with --token, or its key file with --key-file)"
            print(f"{path}: refused: {error}{hint}", file=sys.stderr)
    return refused


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("predict", "explain"):
            return 1 if send_images(args) else 0
        print_server_facts(args)
    except ClientError as error:
        print(f"client: {error}", file=sys.stderr)
        return 2
    except ServerError as error:  # the management API refused `workers`
        print(f"client: refused: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
