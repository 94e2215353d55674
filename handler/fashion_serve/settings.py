"""The handler's settings: the `handler:` section of model-config.yaml.

torch-model-archiver packs model-config.yaml into the archive (--config-file) and
TorchServe hands it to the handler as context.model_yaml_config.

Check a config before packing it (scripts/archive.sh does), or print the table of every
setting that docs/deployment.md holds (a test keeps the two equal):
    python -m fashion_serve.settings handler/model-config.yaml
    python -m fashion_serve.settings --table
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml

from fashion_serve.options import DEFAULT_DELTA_TOLERANCE


def setting(default, help: str):
    """A field with its one explanation: docs/deployment.md's table is made from these."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class HandlerSettings:
    """The `handler:` section of model-config.yaml, with defaults for keys left out."""

    topk: int = setting(5, "classes per prediction unless the request asks for k")
    ig_steps: int | str = setting(
        50,
        "integrated-gradients steps unless the request asks; `auto`: as many as each image "
        "needs to meet `delta_tolerance` ([api.md](api.md#steps-auto))",
    )
    max_ig_steps: int = setting(
        200, "the most integrated-gradients steps a request may ask, or `auto` may use"
    )
    delta_tolerance: float = setting(
        DEFAULT_DELTA_TOLERANCE,
        "`steps: auto`: the |convergence delta| (logits) each explanation is refined to meet, "
        "unless the request asks",
    )
    torch_threads: int = setting(
        1, "torch threads per worker: more spin and contend for the cores of a small CPU"
    )
    explain_threads: int = setting(
        2,
        "threads an explanation's integrated-gradients path points are split across while no "
        "other worker of the server is running, so that it uses the idle cores "
        "([performance.md](performance.md#explanations)); at most the cores the worker may "
        "use (its affinity and its cgroup's CPU limit), on the CPU only; 1: none",
    )
    max_image_pixels: int = setting(
        36_000_000, "larger images are refused from their header, before decoding"
    )
    max_image_bytes: int = setting(
        16 * 1024 * 1024,
        "larger images are refused; a check per image for when requests may be larger than "
        "this (the servers' own cap, `max_request_size` / `--max-request-bytes`, is 1 MiB: "
        "below it this never fires)",
    )
    max_images_per_request: int = setting(
        16, "images in one request (a JSON list, KServe `instances`, an OIP tensor)"
    )
    metrics: bool = setting(
        True, "the handler's Prometheus metrics ([monitoring.md](monitoring.md)); false: none"
    )
    compact_explanations: bool = setting(
        True,
        "the TorchServe runtime sends explanations as compact JSON, encoded by the handler "
        "(TorchServe would pretty-print each number on a line of its own: 40 % more bytes "
        "and slower, [performance.md](performance.md#explanations)); false: TorchServe "
        "encodes them, as KServe's `kserve` and `kservev2` service envelopes need "
        "(`make-storage.sh --protocol v1` sets it)",
    )
    bf16_gradients: bool = setting(
        True,
        "on a CPU that computes bf16 natively (AVX512-BF16 or AMX), integrated gradients' "
        "backward convolutions run in bf16 ([performance.md](performance.md#explanations)); "
        "false: fp32 throughout",
    )

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, (bool, str)) or name == "delta_tolerance":
                continue
            if value < 1:
                raise ValueError(f"model-config.yaml handler.{name} must be >= 1, not {value}")
        if not self.delta_tolerance > 0:
            raise ValueError(
                f"model-config.yaml handler.delta_tolerance must be > 0, not {self.delta_tolerance}"
            )

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


def _parse(key: str, value) -> int | float | str | bool:
    default = HandlerSettings.__dataclass_fields__[key].default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(
                f"model-config.yaml handler.{key} must be true or false, not {value!r}"
            )
        return value
    if key == "ig_steps" and str(value).strip().lower() == "auto":
        return "auto"
    try:
        return float(value) if isinstance(default, float) else int(value)
    except (TypeError, ValueError):
        also = " or auto" if key == "ig_steps" else ""
        raise ValueError(
            f"model-config.yaml handler.{key} must be a number{also}, not {value!r}"
        ) from None


def settings_table() -> str:
    """The Markdown table of every handler setting, its default and its meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for item in fields(HandlerSettings):
        default = item.default if item.default is not MISSING else ""
        shown = str(default).lower() if isinstance(default, bool) else default
        rows.append(f"| `handler.{item.name}` | {shown} | {item.metadata['help']} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    """Exit 1 with the reason if the model-config.yaml at argv[0] would fail a worker's load;
    `--table`: print the settings table (docs/deployment.md holds it)."""
    if argv == ["--table"]:
        print(settings_table(), end="")
        return 0
    (config_path,) = argv
    try:
        HandlerSettings.from_model_yaml(yaml.safe_load(Path(config_path).read_text()))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
