"""The registry of merge methods.

A method is one function registered with `@merge_method`. The decorator records what the
method needs (base model, statistics, data), its paper and its search grid; the function's
keyword-only parameters *are* its hyperparameters, with their defaults and types. Adding a
method means adding one module under `mergezoo/merge/methods/` that uses the decorator.

Example:
    >>> @merge_method("my_mean", paper="https://example.org", needs=Needs(base=False),
    ...               per_model=("weight",), grid={})
    ... def my_mean(x: MergeInputs, *, weight: list[float]) -> torch.Tensor:
    ...     '''Weighted mean of the models.'''
    ...     return sum(w * m for w, m in zip(weight, x.models)) / sum(weight)
    >>> get_method("my_mean").hyperparameters["weight"].per_model
    True
"""

from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from mergezoo.errors import HyperparameterError, UnknownMethodError
from mergezoo.merge.layers import is_setting, setting_leaves


@dataclass(frozen=True)
class Needs:
    """What a method needs beyond the experts' weights (the paper's practical requirements)."""

    # The pretrained model the experts were fine-tuned from: True (required), "optional" (used
    # when given), or False (never used).
    base: bool | Literal["optional"] = True
    statistics: str | None = None  # e.g. "fisher" (diagonal), "gram" (inputs' Gram matrices)
    data: Literal[None, "labelled", "unlabelled"] = None  # data seen while merging
    min_models: int = 1
    max_models: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"base_model": self.base, "statistics": self.statistics,
                "labels": None if self.data is None else self.data == "labelled"}


@dataclass(frozen=True)
class Interval:
    """Allowed range of a numeric hyperparameter; `str(Interval(0, 1, low_open=True))` is (0, 1]."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass
class ModelStream:
    """What a method's `prepare` pass reads. Calling it yields every mergeable tensor once, as
    `MergeInputs`. Where the engine merges slice by slice on CPU, `views()` yields them instead
    as `slicing.SlicedTensor` views of the inputs in their own dtype (no copy, the fused
    kernels read them), else `views` is None. `entries`: how many entries each model has."""

    inputs: Callable[[], Any]
    views: Callable[[], Any] | None = None
    entries: int = 0

    def __call__(self):
        return self.inputs()


@dataclass
class MergeInputs:
    """Everything a method sees for one tensor, already on the compute device and dtype."""

    key: str
    base: torch.Tensor | None
    models: list[torch.Tensor]
    # For random methods, one 32-bit key per model, from the seed, the tensor's name and the
    # model's index; draws are a hash of (key, entry index) (see `ops.keep_lanes`), so they do
    # not depend on how the tensor is sliced.
    seeds: list[int] | None = None
    offset: int = 0  # the flat index of these tensors' first entry in the whole tensor
    state: Any = None  # what the method's `prepare` pass returned
    # What the method's `per_tensor` pass returned for this tensor, when the engine merges it
    # slice by slice (see `MergeMethod.elementwise`); None otherwise.
    tensor_state: Any = None
    slice_index: int = 0  # which of the engine's slices of the tensor this is (0: whole)
    # The engine owns the tensors it passes, so task vectors may be computed in place over the
    # models (saving a copy of every expert); `models` must not be read after `deltas` then.
    owned: bool = False
    _deltas: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def deltas(self) -> list[torch.Tensor]:
        """Task vectors: each model minus the base."""
        if self._deltas is None:
            if self.base is None:
                raise HyperparameterError(f"{self.key}: this method needs a base model")
            if self.owned:
                self._deltas = [m.sub_(self.base) for m in self.models]
                self.models = []
            else:
                self._deltas = [m - self.base for m in self.models]
        return self._deltas


@dataclass(frozen=True)
class Hyperparameter:
    name: str  # as written in recipes ("lambda", not "lambda_")
    arg: str  # the function's argument name
    default: Any
    kind: type | tuple  # float, int, bool, str, or a tuple of allowed strings
    per_model: bool = False
    interval: Interval | None = None
    help: str = ""

    def check(self, value: Any, where: str) -> Any:
        """Return `value` converted to this parameter's type, or raise HyperparameterError.

        A per-layer setting (a gradient list or filter rules) is returned as it is, once every
        value inside it has passed the check.
        """
        if isinstance(value, (list, dict)):
            if not is_setting(value):
                raise HyperparameterError(
                    f"{where}: {self.name} must be a value, a list of numbers (a gradient over "
                    f"the layers) or a list of {{filter, value}} rules, got {value!r}")
            try:
                leaves = setting_leaves(value)
            except ValueError as err:
                raise HyperparameterError(f"{where}: {self.name}: {err}") from None
            for leaf in leaves:
                self._check_one(leaf, where)
            return value
        return self._check_one(value, where)

    def _check_one(self, value: Any, where: str) -> Any:
        if isinstance(self.kind, tuple):
            if value not in self.kind:
                raise HyperparameterError(
                    f"{where}: {self.name}={value!r} is not one of {', '.join(map(str, self.kind))}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise HyperparameterError(f"{where}: {self.name} must be true or false, got {value!r}")
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise HyperparameterError(f"{where}: {self.name} must be a number, got {value!r}")
            if self.kind is int and float(value) != int(value):
                raise HyperparameterError(f"{where}: {self.name} must be an integer, got {value!r}")
            value = self.kind(value)
            if not math.isfinite(value) or (self.interval and value not in self.interval):
                raise HyperparameterError(
                    f"{where}: {self.name}={value!r} is out of range {self.interval}")
            return value
        return value


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method and everything `mergezoo methods` tells about it."""

    name: str
    fn: Callable[..., torch.Tensor]
    paper: str
    needs: Needs
    grid: dict[str, list]
    hyperparameters: dict[str, Hyperparameter]
    returns: Literal["delta", "weights"]  # a merged task vector, or merged weights
    # prepare(stream, kwargs): a first pass over all tensors (global statistics); `stream`
    # is a `ModelStream` (or any callable yielding `MergeInputs`).
    prepare: Callable | None = None
    random: bool = False
    # The merged value at each position depends only on the inputs at that position (given the
    # `prepare` and `per_tensor` states), so on CPU the engine merges each tensor slice by
    # slice, converting the inputs to the compute dtype one cache-sized slice at a time.
    elementwise: bool = False
    # whole_if(kwargs) -> True where a configuration needs whole tensors after all (e.g. a
    # rescale to each tensor's L1 norm): the engine then merges tensor by tensor.
    whole_if: Callable[[dict[str, Any]], bool] | None = None
    # per_tensor(view, hp) -> state: a first pass over one tensor's slices before they are
    # merged (e.g. each task vector's top-k threshold); `view` is a `SlicedTensor`.
    per_tensor: Callable | None = None
    # fused(x, **hp) -> kernels.Combine: the method as data, which the engine's fused CPU
    # kernels run in one pass per slice (`x` holds seeds and states, no tensors); None: eager.
    fused: Callable | None = None
    # What the fused kernels save over the torch functions, in seconds per 1e9 parameters x
    # models (measured with benchmarks/merge_speed.py on 2 CPU cores); the engine uses them
    # when that saving beats loading them (see kernels.worth_it).
    fused_saves: float = 0.0
    aliases: tuple[str, ...] = ()
    check: Callable[[dict[str, Any]], None] | None = None  # raises ValueError on bad combinations
    # The recipe name of a global hyperparameter that scales the merged task vector linearly
    # and last: fn(x, lambda_=c) == c * fn(x, lambda_=1), bit for bit. The in-memory merge
    # (`mergezoo.merge.memory`) then merges once per grid and scales per grid point.
    linear: str | None = None

    def slices(self, kwargs: dict[str, Any]) -> bool:
        """Whether the engine may merge slice by slice with these resolved hyperparameters."""
        return self.elementwise and not (self.whole_if is not None and self.whole_if(kwargs))

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.fn) or "").split("\n\n")[0].replace("\n", " ")

    def resolve(self, params: dict[str, Any], model_params: list[dict[str, Any]],
                n_models: int) -> dict[str, Any]:
        """Check user hyperparameters and return the function's keyword arguments.

        `params` are global (recipe `parameters:`), `model_params` one dict per model (recipe
        `models: - parameters:`). A per-model parameter set globally applies to every model.
        """
        known = ", ".join(self.hyperparameters) or "none"
        if self.returns == "delta" and "int8_mask" in params:
            # mergekit's int8_mask stores its sign masks as int8 to save memory; the merged
            # tensors are the same, and this engine never stores such masks: accepted, no-op.
            if not isinstance(params["int8_mask"], bool):
                raise HyperparameterError(
                    f"parameters: int8_mask must be true or false, got {params['int8_mask']!r}")
            params = {k: v for k, v in params.items() if k != "int8_mask"}
        for key in params:
            if key not in self.hyperparameters:
                raise HyperparameterError(
                    f"method '{self.name}' has no hyperparameter '{key}' (valid: {known})")
        for i, mp in enumerate(model_params):
            for key in mp:
                hp = self.hyperparameters.get(key)
                if hp is None or not hp.per_model:
                    valid = ", ".join(h.name for h in self.hyperparameters.values() if h.per_model)
                    raise HyperparameterError(
                        f"model {i}: method '{self.name}' takes no per-model parameter '{key}' "
                        f"(per-model: {valid or 'none'})")
        kwargs: dict[str, Any] = {}
        for hp in self.hyperparameters.values():
            if hp.per_model:
                shared = hp.check(params[hp.name], "parameters") if hp.name in params else hp.default
                values = []
                for i in range(n_models):
                    mp = model_params[i] if i < len(model_params) else {}
                    values.append(hp.check(mp[hp.name], f"model {i}") if hp.name in mp else shared)
                kwargs[hp.arg] = values
            else:
                kwargs[hp.arg] = hp.check(params.get(hp.name, hp.default), "parameters")
        if self.check is not None:
            try:
                self.check(kwargs)
            except ValueError as err:
                raise HyperparameterError(f"method '{self.name}': {err}") from None
        return kwargs


_REGISTRY: dict[str, MergeMethod] = {}
_ALIASES: dict[str, str] = {}


def _hyperparameters(fn: Callable, per_model: tuple[str, ...], ranges: dict[str, Interval],
                     helps: dict[str, str]) -> dict[str, Hyperparameter]:
    hints = typing.get_type_hints(fn)
    result = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        name = p.name.rstrip("_")
        hint = hints.get(p.name, float)
        if typing.get_origin(hint) is Literal:
            kind: type | tuple = typing.get_args(hint)
        elif p.name in per_model or typing.get_origin(hint) is list:
            kind = typing.get_args(hint)[0] if typing.get_args(hint) else float
        else:
            kind = hint
        default = p.default
        if p.name in per_model and isinstance(default, (list, tuple)):
            default = default[0]
        result[name] = Hyperparameter(name=name, arg=p.name, default=default, kind=kind,
                                      per_model=p.name in per_model, interval=ranges.get(name),
                                      help=helps.get(name, ""))
    return result


def merge_method(name: str, *, paper: str, needs: Needs, grid: dict[str, list],
                 per_model: tuple[str, ...] = (), ranges: dict[str, Interval] | None = None,
                 returns: Literal["delta", "weights"] = "delta", prepare: Callable | None = None,
                 random: bool = False, aliases: tuple[str, ...] = (),
                 helps: dict[str, str] | None = None,
                 check: Callable[[dict[str, Any]], None] | None = None,
                 elementwise: bool = False, whole_if: Callable | None = None,
                 per_tensor: Callable | None = None,
                 fused: Callable | None = None, fused_saves: float = 0.0,
                 linear: str | None = None) -> Callable:
    """Register a merge method. See the module docstring for an example.

    `linear` names a global hyperparameter (e.g. "lambda") that the method multiplies its
    merged task vector by as its last step, so that a sweep over it can reuse one merge.

    `elementwise=True` promises that the function, given the slices of every input at the same
    positions, returns the merged slice (so it must not look at shapes or whole-tensor
    statistics, except through `per_tensor`'s state in `x.tensor_state`). `fused` gives the
    same merge as data for the fused kernels (`mergezoo.merge.kernels.Combine`).
    """
    if (per_tensor is not None or fused is not None) and not elementwise:
        raise ValueError(f"{name}: per_tensor and fused are for slice-by-slice merges; "
                         "they need elementwise=True")

    def register(fn: Callable) -> Callable:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"merge method '{name}' is registered twice")
        hps = _hyperparameters(fn, per_model, ranges or {}, helps or {})
        for key in grid:  # grid keys are recipe names ("lambda")
            if key not in hps:
                raise ValueError(f"{name}: grid names unknown hyperparameter '{key}'")
        if linear is not None and (linear not in hps or hps[linear].per_model
                                   or returns != "delta"):
            raise ValueError(f"{name}: linear must name a global hyperparameter of a method "
                             f"that returns a task vector, got '{linear}'")
        _REGISTRY[name] = MergeMethod(name=name, fn=fn, paper=paper, needs=needs, grid=grid,
                                      hyperparameters=hps, returns=returns, prepare=prepare,
                                      random=random, aliases=aliases, check=check,
                                      elementwise=elementwise, whole_if=whole_if,
                                      per_tensor=per_tensor,
                                      fused=fused, fused_saves=fused_saves, linear=linear)
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return register


def _load_builtin_methods() -> None:
    import mergezoo.merge.methods  # noqa: F401  (registers the built-in methods)


def get_method(name: str) -> MergeMethod:
    """Return the method registered as `name` (or one of its aliases)."""
    _load_builtin_methods()
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise UnknownMethodError(
            f"unknown merge method '{name}' (valid: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[key]


def list_methods() -> list[MergeMethod]:
    """All registered methods, sorted by name."""
    _load_builtin_methods()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
