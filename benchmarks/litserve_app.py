"""The same model and preprocessing as the TorchServe handler, behind LitServe (the peer
server benchmarks.bench measures beside TorchServe).

    python -m benchmarks.litserve_app --export-dir artifacts/export --port 8000 \
        --workers 1 --max-batch-size 8 --batch-timeout-ms 5

Input: LitServe parses the body as JSON, so an image travels in its natural form here,
{"data": "<base64 PNG>"} to POST /predict. The serving core answers it
(fashion_serve.service, the model and handler/model-config.yaml's settings, as both runtimes
do): LitServe is a third adapter, as thin as the other two. Output: the top-k JSON object.
Needs the `bench` extra (litserve).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import litserve as ls
import torch
from fastapi import HTTPException

from fashion_serve.service import OK, FashionService, Request
from fashion_serve.settings import HandlerSettings
from tests.support.servers import MODEL_NAME, model_config


class FashionAPI(ls.LitAPI):
    def __init__(self, export_dir: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.export_dir = export_dir

    def setup(self, device) -> None:
        settings = HandlerSettings.from_model_yaml(model_config())
        self.service = FashionService(
            self.export_dir / "model.pt", settings, torch.device("cpu"), MODEL_NAME
        )

    def decode_request(self, request):
        return Request({"body": request})

    def batch(self, inputs):
        return inputs  # a list of Requests: the core answers them as one batch

    def predict(self, inputs):
        single = isinstance(inputs, Request)
        answers = self.service.run([inputs] if single else inputs)
        return answers[0] if single else answers

    def unbatch(self, outputs):
        return outputs

    def encode_response(self, answer):
        if answer.status != OK:
            raise HTTPException(status_code=answer.status, detail=answer.body)
        return answer.body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", type=Path, required=True, help="holds model.pt")
    parser.add_argument("--port", type=int, default=8000, help="loopback port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="inference workers (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=1, help="1: no batching")
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0, help="default 0")
    args = parser.parse_args()
    api = FashionAPI(
        args.export_dir,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers)
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
