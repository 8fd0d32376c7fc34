"""Hyperparameter controls of the merge playground, from the method registry.

Each hyperparameter of a method becomes one control: a slider for numbers (range from its
`Interval`, widened to its search grid and default where the interval is open-ended), a checkbox
for booleans, a dropdown for a choice of strings. A per-model hyperparameter (`weight`,
`density`) gets one slider whose value every selected expert shares, as a recipe's global
`parameters:` entry does.

Example:
    >>> [c.name for c in method_controls("ties")]
    ['weight', 'density', 'lambda', 'normalize', 'trim_scope', 'sign_rule']
    >>> c = method_controls("ties")[1]
    >>> (c.kind, c.minimum, c.maximum, c.value)
    ('slider', 0.01, 1.0, 0.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mergezoo.errors import SpaceInputError
from mergezoo.merge import get_method
from mergezoo.merge.registry import Hyperparameter

STEPS = 100  # a slider moves in about this many steps over its range


@dataclass(frozen=True)
class Control:
    """One hyperparameter's control: kind ("slider", "checkbox" or "dropdown"), its range or
    choices, its default, and the help text the registry gives."""

    method: str
    name: str
    kind: str
    value: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    info: str = ""
    per_model: bool = False

    @property
    def label(self) -> str:
        return self.name + (" (every expert)" if self.per_model else "")


def _nice_step(span: float, integer: bool) -> float:
    if integer:
        return 1
    raw = span / STEPS
    power = 10 ** math.floor(math.log10(raw))
    return min((m * power for m in (1, 2, 5, 10) if m * power >= raw), default=raw)


def _slider(method: str, hp: Hyperparameter, grid: list) -> Control:
    integer = hp.kind is int
    known = [float(v) for v in [hp.default, *grid] if isinstance(v, (int, float))]
    low = hp.interval.low if hp.interval and math.isfinite(hp.interval.low) else None
    high = hp.interval.high if hp.interval and math.isfinite(hp.interval.high) else None
    # open-ended: from 0 (or below the smallest known value) to twice the largest known one
    if low is None:
        low = min([0.0] + known)
    if high is None:
        high = max([1.0] + [2 * abs(v) for v in known])
    step = _nice_step(high - low, integer)
    if hp.interval and hp.interval.low_open and low == hp.interval.low:
        low += step
    if hp.interval and hp.interval.high_open and high == hp.interval.high:
        high -= step
    cast = int if integer else float
    return Control(method, hp.name, "slider", cast(hp.default), minimum=cast(round(low, 10)),
                   maximum=cast(round(high, 10)), step=step, info=hp.help,
                   per_model=hp.per_model)


def method_controls(method: str) -> list[Control]:
    """The controls of one method, in its signature's order."""
    spec = get_method(method)
    out = []
    for hp in spec.hyperparameters.values():
        if isinstance(hp.kind, tuple):
            out.append(Control(spec.name, hp.name, "dropdown", hp.default,
                               choices=tuple(map(str, hp.kind)), info=hp.help))
        elif hp.kind is bool:
            out.append(Control(spec.name, hp.name, "checkbox", bool(hp.default), info=hp.help))
        elif hp.kind in (int, float):
            out.append(_slider(spec.name, hp, list(spec.grid.get(hp.name, []))))
    return out


def defaults(method: str) -> dict[str, Any]:
    """Every control of `method` at its default value."""
    return {c.name: c.value for c in method_controls(method)}


def check_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` checked against the method's controls: known names, numbers inside the slider
    ranges (the registry's `resolve` then checks the method's own rules)."""
    controls = {c.name: c for c in method_controls(method)}
    out = {}
    for name, value in params.items():
        control = controls.get(name)
        if control is None:
            raise SpaceInputError(f"method {method!r} has no hyperparameter {name!r} "
                                  f"(it has: {', '.join(controls) or 'none'})")
        if control.kind == "slider":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise SpaceInputError(f"{name} must be a number, got {value!r}")
            if not control.minimum <= value <= control.maximum:
                raise SpaceInputError(f"{name}={value:g} is outside the slider's range "
                                      f"[{control.minimum:g}, {control.maximum:g}]")
            value = int(value) if isinstance(control.value, int) else float(value)
        elif control.kind == "checkbox" and not isinstance(value, bool):
            raise SpaceInputError(f"{name} must be true or false, got {value!r}")
        elif control.kind == "dropdown" and value not in control.choices:
            raise SpaceInputError(f"{name}={value!r} is not one of {list(control.choices)}")
        out[name] = value
    return out
