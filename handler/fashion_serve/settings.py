"""The handler's settings: the `handler:` section of model-config.yaml.

torch-model-archiver packs model-config.yaml into the archive (--config-file) and
TorchServe hands it to the handler as context.model_yaml_config.

Check a config before packing it (scripts/archive.sh does):
    python -m fashion_serve.settings handler/model-config.yaml
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

import yaml


@dataclass(frozen=True)
class HandlerSettings:
    """The `handler:` section of model-config.yaml, with defaults for keys left out."""

    topk: int = 5
    ig_steps: int = 50
    max_ig_steps: int = 200
    torch_threads: int = 1
    # Threads integrated gradients split their path points across while no other worker is
    # running (fashion_serve.workers), so that an explanation uses the idle cores; 1: none.
    explain_threads: int = 2
    max_image_pixels: int = 36_000_000
    max_image_bytes: int = 16 * 1024 * 1024
    max_images_per_request: int = 16
    metrics: bool = True  # the handler's Prometheus metrics (fashion_serve.metrics); false: none
    # Integrated gradients' backward convolutions in bf16 on a CPU that computes bf16
    # natively (fashion_serve.ig; the forward pass stays fp32); false: fp32 throughout.
    bf16_gradients: bool = True

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool):
                continue
            if value < 1:
                raise ValueError(f"model-config.yaml handler.{name} must be >= 1, not {value}")

    @classmethod
    def from_model_yaml(cls, model_yaml_config: dict | None) -> HandlerSettings:
        """Raises ValueError on an unknown key: a typo would otherwise leave its default."""
        section = (model_yaml_config or {}).get("handler") or {}
        known = [f.name for f in fields(cls)]
        unknown = [key for key in section if key not in known]
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            raise ValueError(
                f"model-config.yaml handler: unknown key{plural} "
                f"{', '.join(repr(key) for key in unknown)}; known keys: {', '.join(known)}"
            )
        return cls(**{key: _parse(key, value) for key, value in section.items()})


def _parse(key: str, value) -> int | bool:
    if isinstance(HandlerSettings.__dataclass_fields__[key].default, bool):
        if not isinstance(value, bool):
            raise ValueError(
                f"model-config.yaml handler.{key} must be true or false, not {value!r}"
            )
        return value
    return int(value)


def main(argv: list[str]) -> int:
    """Exit 1 with the reason if the model-config.yaml at argv[0] would fail a worker's load."""
    (config_path,) = argv
    try:
        HandlerSettings.from_model_yaml(yaml.safe_load(Path(config_path).read_text()))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
