"""The largest answer the handler gives must fit in the frontend's max_response_size: a
larger reply makes TorchServe's frontend drop it and restart the worker, and every request
in that batch gets a 500."""

from __future__ import annotations

import base64
import json

from tests.handler.helpers import encode, handle_json, noise, set_requests
from tests.support.servers import REPO_ROOT, model_config, read_properties

CONFIGS = ("config.properties", "docker/config.properties", "docker/kserve/config.properties")


def test_an_explanation_of_the_most_images_a_request_may_carry_fits(handler_and_context):
    handler, context = handler_and_context
    count = model_config()["handler"]["max_images_per_request"]  # as deployed
    # Noise: the input panel of each heatmap PNG compresses about as badly as any picture.
    images = [base64.b64encode(encode(noise(28, 28, seed=i), "PNG")).decode() for i in range(count)]
    set_requests(context, [{"explain": "True"}])
    (answer,) = handle_json(handler, [{"body": json.dumps({"data": images}).encode()}], context)
    assert context.get_response_status(0)[0] == 200 and len(answer) == count
    # As TorchServe's worker sends an object (compact_explanations false, as the KServe v1
    # layout has it): the largest encoding the handler's answers get.
    size = len(json.dumps(answer, indent=2).encode())
    assert size > 1 << 18  # about 26 KB an image, with its heatmap
    for name in CONFIGS:
        config = read_properties((REPO_ROOT / name).read_text())
        assert size <= int(config["max_response_size"]), name
