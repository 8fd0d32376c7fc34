"""Where a tensor sits in the network, and what that means for per-layer settings.

- `layer_positions`: 0.0 for the first layer, 1.0 for the last; tensors outside the numbered
  layers (embeddings, final norm, head) at 0.0, where mergekit evaluates them (t = 0).
- `Setting` values, as in mergekit: a hyperparameter may be a number, a list of numbers (a
  gradient interpolated over the layers) or a list of `{filter: substring, value: ...}` rules.
- LiNeS (Wang et al., 2024): scale the merged task vector of layer l by alpha + beta * l / (L-1),
  so shallow layers keep the pretrained features; tensors outside the layers by alpha, as the
  official code does.

Example:
    >>> layer_positions(["embed.weight", "layers.0.w", "layers.2.w", "lm_head.weight"])
    {'embed.weight': 0.0, 'layers.0.w': 0.0, 'layers.2.w': 1.0, 'lm_head.weight': 0.0}
    >>> evaluate_setting([{"filter": "attn", "value": [0.0, 1.0]}, {"value": 0.5}], "layers.1.attn.q", 1.0)
    1.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mergezoo.errors import HyperparameterError

_LAYER = re.compile(r"\.(?:layers?|h|blocks?)\.(\d+)\.")


def layer_index(key: str) -> int | None:
    match = _LAYER.search(f".{key}.")
    return int(match.group(1)) if match else None


def layer_positions(keys: list[str]) -> dict[str, float]:
    """Relative depth in [0, 1] of every tensor, where a per-layer gradient is evaluated:
    numbered layers spread evenly; every unnumbered tensor (embeddings, final norm, head) at
    0, as mergekit plans the weights before and after the layers with t = 0."""
    indices = {k: layer_index(k) for k in keys}
    last = max((i for i in indices.values() if i is not None), default=0)
    positions = {}
    for key, index in indices.items():
        if index is not None:
            # A single-layer model sits at 1.0, as mergekit evaluates its gradients there.
            positions[key] = index / last if last else 1.0
        else:
            positions[key] = 0.0
    return positions


def is_setting(value: Any) -> bool:
    """True for a value that varies by tensor (a gradient or filter rules)."""
    return isinstance(value, list) and bool(value) and (
        all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or all(isinstance(v, dict) for v in value))


def evaluate_setting(value: Any, key: str, position: float) -> Any:
    """The value a setting takes for tensor `key` at relative depth `position`."""
    if not isinstance(value, list):
        return value
    if all(isinstance(v, dict) for v in value):
        for rule in value:
            if not rule.get("filter") or rule["filter"] in key:
                return evaluate_setting(rule["value"], key, position)
        raise HyperparameterError(f"{key}: no filter rule matches and there is no default rule")
    if len(value) == 1:
        return value[0]
    scaled = position * (len(value) - 1)
    lo = min(int(scaled), len(value) - 2)
    frac = scaled - lo
    return (1 - frac) * value[lo] + frac * value[lo + 1]


def setting_leaves(value: Any) -> list[Any]:
    """Every plain value inside a setting, for validation."""
    if not isinstance(value, list):
        return [value]
    if all(isinstance(v, dict) for v in value):
        for rule in value:
            extra = set(rule) - {"filter", "value"}
            if extra or "value" not in rule:
                raise HyperparameterError(f"a filter rule takes 'filter' and 'value', got {sorted(rule)}")
        return [leaf for rule in value for leaf in setting_leaves(rule["value"])]
    return list(value)


@dataclass(frozen=True)
class LiNeS:
    """Layer-increasing network scaling of the merged task vector."""

    alpha: float
    beta: float

    def scale(self, key: str, position: float) -> float:
        """The factor of tensor `key` at relative depth `position` (see `layer_positions`):
        alpha + beta * position inside the numbered layers, alpha outside them (embeddings,
        final norm, head), as the official code (`LiNeS_scaling`) scales the keys that match
        no block."""
        if layer_index(key) is None:
            return self.alpha
        return self.alpha + self.beta * position
