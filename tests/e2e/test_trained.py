"""A trained model served by TorchServe classifies the sample images as their true classes."""

from __future__ import annotations

import pytest

from tests.e2e.e2e_helpers import SAMPLES_DIR, assert_explanation, post_multipart, post_raw

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_every_sample_is_predicted_as_its_class(torchserve_trained, samples):
    server = torchserve_trained
    wrong = {}
    for file_name, sample in samples.items():
        image_bytes = (SAMPLES_DIR / file_name).read_bytes()
        response = post_raw(server.predictions_url, server.inference_headers, image_bytes)
        assert response.status_code == 200, response.text
        predicted = next(iter(response.json()))
        if predicted != sample["class_name"]:
            wrong[file_name] = response.json()
    assert not wrong, f"misclassified samples: {wrong}"


def test_explanation_defaults_to_the_true_class(torchserve_trained, samples):
    server = torchserve_trained
    for file_name in ("ankle_boot.png", "trouser.png"):
        image_bytes = (SAMPLES_DIR / file_name).read_bytes()
        response = post_multipart(server.explanations_url, server.inference_headers, image_bytes)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert_explanation(answer)
        assert answer["target_name"] == samples[file_name]["class_name"]
        assert answer["probability"] > 0.5
