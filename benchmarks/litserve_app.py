"""The same model and preprocessing as the TorchServe handler, behind LitServe (the peer
server benchmarks.bench measures beside TorchServe).

    python -m benchmarks.litserve_app --export-dir artifacts/export --port 8000 \
        --workers 1 --max-batch-size 8 --batch-timeout-ms 5

Input: LitServe parses the body as JSON, so an image travels in its natural form here,
{"data": "<base64 PNG>"} to POST /predict; the handler's own parse_request decodes it.
The model and settings are the handler's (a FashionHandler initialized as in a TorchServe
worker, see benchmarks/inprocess.py). Output: the handler's top-k JSON object.
Needs the `bench` extra (litserve).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import litserve as ls
from fastapi import HTTPException

from benchmarks.inprocess import initialized_handler, prepare
from fashion_errors import RequestError
from fashion_image import to_batch_tensor


class FashionAPI(ls.LitAPI):
    def __init__(self, export_dir: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.export_dir = export_dir

    def setup(self, device) -> None:
        # The TorchServe handler, initialized as a worker would: same settings, same model.
        self.handler, _ = initialized_handler(self.export_dir)

    def decode_request(self, request):
        try:
            pixels, options = prepare(self.handler, b"", payload=request)
        except RequestError as error:
            raise HTTPException(status_code=error.code, detail=error.to_body()) from error
        return pixels, options

    def batch(self, inputs):
        return inputs  # a list of (pixels, options): predict stacks them itself

    def predict(self, inputs):
        single = isinstance(inputs, tuple)
        items = [inputs] if single else inputs
        contract = self.handler.contract
        batch = to_batch_tensor([pixels for pixels, _ in items], contract.mean, contract.std)
        probabilities = self.handler.inference(batch)  # (N, num_classes)
        answers = self.handler.top_k_answers(probabilities, [options for _, options in items])
        return answers[0] if single else answers

    def unbatch(self, outputs):
        return outputs

    def encode_response(self, output):
        return output


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
