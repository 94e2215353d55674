"""The request options: their names, their values, and the one parser every runtime uses.

topk, target, invert, steps, delta_tolerance, method, sign and heatmap arrive as headers
(X-Topk, X-Delta-Tolerance), form
fields, JSON fields or OIP parameters, always as this vocabulary; docs/api.md says what each
does. Nothing here imports Captum or a server: parsing a request stays cheap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fashion_serve import errors

OPTION_KEYS = ("topk", "target", "invert", "steps", "delta_tolerance", "method", "sign", "heatmap")
# steps "auto": integrated gradients add path points to each image until its |convergence
# delta| is within delta_tolerance, or the next round would pass max_ig_steps.
AUTO_STEPS = "auto"
# steps "auto": the |convergence delta| (logits) each explanation is refined to meet, unless
# the settings or the request say (docs/performance.md#steps-auto: why 0.15).
DEFAULT_DELTA_TOLERANCE = 0.15
INTEGRATED_GRADIENTS = "integrated_gradients"
METHODS = (INTEGRATED_GRADIENTS, "saliency", "input_x_gradient", "occlusion")
METHOD_ALIASES = {"ig": INTEGRATED_GRADIENTS, "ixg": "input_x_gradient"}
SIGNS = ("positive", "all")  # heatmap: evidence for the target only, or for and against
INVERT_MODES = ("auto", "true", "false")
# A number with more significant digits is out of every option's range (int() of a long
# one costs time, and Python refuses one over 4,300 digits).
MAX_DIGITS = 9
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class RequestOptions:
    topk: int
    target: int | None  # class index to explain; None means the predicted class
    invert: str  # "auto", "true" or "false"
    steps: int | str  # integrated-gradients steps, or AUTO_STEPS
    method: str = INTEGRATED_GRADIENTS  # explanation method, one of METHODS
    sign: str = "positive"  # heatmap: "positive" evidence only, or "all"
    heatmap: bool = True  # draw the heatmap (most of a cheap method's cost); false: numbers only
    delta_tolerance: float = DEFAULT_DELTA_TOLERANCE  # steps "auto": the |delta| to reach


@dataclass(frozen=True)
class OptionLimits:
    default_topk: int
    default_steps: int | str  # a count, or AUTO_STEPS
    max_steps: int
    default_tolerance: float = DEFAULT_DELTA_TOLERANCE
    max_images: int = 16  # images in one request (a JSON list, instances, an OIP tensor)


def parse_options(raw: Mapping, class_names: Sequence[str], limits: OptionLimits) -> RequestOptions:
    """Validate topk, target, invert, steps, delta_tolerance, method, sign and heatmap given
    as headers, form or JSON fields."""
    num_classes = len(class_names)
    topk = _parse_int(raw, "topk", limits.default_topk, 1, num_classes)
    if "steps" in raw and _as_text(raw["steps"]).strip().lower() == AUTO_STEPS:
        steps = AUTO_STEPS
    else:
        steps = _parse_int(raw, "steps", limits.default_steps, 1, limits.max_steps, AUTO_STEPS)
    tolerance = limits.default_tolerance
    if "delta_tolerance" in raw:
        tolerance = parse_tolerance(raw["delta_tolerance"], "delta_tolerance")
    target = parse_target(raw["target"], class_names) if "target" in raw else None

    invert = "auto"
    if "invert" in raw:
        value = _as_text(raw["invert"]).strip().lower()
        if value in _TRUE:
            invert = "true"
        elif value in _FALSE:
            invert = "false"
        elif value in INVERT_MODES:
            invert = value
        else:
            raise errors.invalid_parameter(
                f"invert={errors.shown(value)!r} is not understood; use true, false or auto."
            )
    method = _parse_choice(raw, "method", INTEGRATED_GRADIENTS, METHODS, METHOD_ALIASES)
    sign = _parse_choice(raw, "sign", "positive", SIGNS)
    heatmap = True
    if "heatmap" in raw:
        text = _as_text(raw["heatmap"]).strip().lower()  # JSON true/false arrive as bools
        if text not in _TRUE + _FALSE:
            raise errors.invalid_parameter(
                f"heatmap={errors.shown(text)!r} is not understood; use true or false."
            )
        heatmap = text in _TRUE
    return RequestOptions(topk, target, invert, steps, method, sign, heatmap, tolerance)


def parse_tolerance(value, name: str) -> float:
    """A |convergence delta| to reach: a finite number > 0."""
    text = _as_text(value).strip()
    try:
        number = float(text) if not isinstance(value, bool) and len(text) <= 32 else math.nan
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise errors.invalid_parameter(
            f"{name}={errors.shown(text)!r} is not a number > 0 (e.g. 0.05)."
        )
    return number


def _parse_choice(
    raw: Mapping, key: str, default: str, choices: Sequence[str], aliases: Mapping | None = None
) -> str:
    if key not in raw:
        return default
    value = _as_text(raw[key]).strip().lower().replace("-", "_")
    value = (aliases or {}).get(value, value)
    if value not in choices:
        raise errors.invalid_parameter(
            f"{key}={errors.shown(_as_text(raw[key]))!r} is not one of: {', '.join(choices)}."
        )
    return value


def parse_target(value, class_names: Sequence[str]) -> int:
    """A class index (0-based) or a class name (case-insensitive) -> the class index."""
    text = _as_text(value).strip()
    if re.fullmatch(r"-?\d+", text):
        index = _whole_number(text)
        if 0 <= index < len(class_names):
            return index
        raise errors.unknown_target(
            f"target={errors.shown(text)} is out of range; use 0..{len(class_names) - 1} or a "
            f"class name: {', '.join(class_names)}."
        )
    folded = [name.casefold() for name in class_names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    raise errors.unknown_target(
        f"target={errors.shown(text)!r} is not a class; use an index 0..{len(class_names) - 1} "
        f"or one of: {', '.join(class_names)}."
    )


def _parse_int(
    raw: Mapping, key: str, default, low: int, high: int, word: str | None = None
) -> int:
    if key not in raw:
        return default
    value = raw[key]
    text = _as_text(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[+-]?\d+", text):
        also = f" or {word}" if word else ""
        raise errors.invalid_parameter(
            f"{key}={errors.shown(text)!r} is not a whole number; use {low}..{high}{also}."
        )
    number = _whole_number(text)
    if not low <= number <= high:
        raise errors.parameter_out_of_range(
            f"{key}={errors.shown(text)} is out of range; use {low}..{high}."
        )
    return number


def _whole_number(text: str) -> int | float:
    """A signed run of digits as a number; past MAX_DIGITS significant digits +-inf, which
    every range check refuses."""
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > MAX_DIGITS:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def _as_text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and len(value) == 1:  # a JSON field sent as a one-item list
        return _as_text(value[0])
    return str(value)
