"""The handler's settings: the `handler:` section of model-config.yaml.

torch-model-archiver packs model-config.yaml into the archive (--config-file) and
TorchServe hands it to the handler as context.model_yaml_config.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HandlerSettings:
    """The `handler:` section of model-config.yaml, with defaults for keys left out."""

    topk: int = 5
    ig_steps: int = 50
    max_ig_steps: int = 200
    torch_threads: int = 1
    max_image_pixels: int = 36_000_000
    max_image_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"model-config.yaml handler.{name} must be >= 1, not {value}")

    @classmethod
    def from_model_yaml(cls, model_yaml_config: dict | None) -> HandlerSettings:
        section = (model_yaml_config or {}).get("handler") or {}
        known = {key: int(section[key]) for key in cls.__dataclass_fields__ if key in section}
        return cls(**known)
