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
    # TorchServe's per-batch worker lines (see fashion_handler.quiet_per_batch_lines).
    per_batch_logs: bool = False

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, bool) and value < 1:
                raise ValueError(f"model-config.yaml handler.{name} must be >= 1, not {value}")

    @classmethod
    def from_model_yaml(cls, model_yaml_config: dict | None) -> HandlerSettings:
        section = (model_yaml_config or {}).get("handler") or {}
        known = {}
        for key, spec in cls.__dataclass_fields__.items():
            if key in section:
                known[key] = (
                    _boolean(key, section[key]) if spec.type == "bool" else int(section[key])
                )
        return cls(**known)


def _boolean(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"model-config.yaml handler.{key} must be true or false, not {value!r}")
