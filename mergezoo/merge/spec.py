"""What a merge method is, and the decorator that registers one (`registry` looks them up).

A method is one function registered with `@merge_method`. The decorator records what the
method needs (base model, statistics, data), its paper and its search grid; the function's
keyword-only parameters *are* its hyperparameters, with their defaults and types. Adding a
method means adding one module under `mergezoo/merge/methods/` that uses the decorator.

Example:
    >>> @merge_method("my_mean", paper="https://example.org", needs=Needs(base=False),
    ...               per_model=("weight",), grid={})
    ... def my_mean(x: MergeInputs, *, weight: list[float] = 1.0) -> torch.Tensor:
    ...     '''Weighted mean of the models.'''
    ...     return sum(w * m for w, m in zip(weight, x.models)) / sum(weight)
    >>> _REGISTRY["my_mean"].hyperparameters["weight"].per_model
    True
    >>> del _REGISTRY["my_mean"]
"""

from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from mergezoo.errors import HyperparameterError
from mergezoo.merge.layers import is_setting, setting_leaves

if TYPE_CHECKING:  # torch is imported where the maths runs, not to list the methods
    import torch


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


@dataclass(frozen=True)
class TopK:
    """Per tensor: the `k` largest magnitudes of model `model`'s task vector, ties broken by
    position (k = 0: none of them). Its value is a `topk.Selection` of the entries a method is
    given (`keep(t)` a mask, `apply(t)` the kept values)."""

    model: int
    k: int


@dataclass(frozen=True)
class ModelThreshold:
    """Over the whole model: the magnitude of model `model`'s (int(density n) + 1)-th largest
    task-vector entry, n its entries in every tensor (the TIES paper's `topk_values_mask`).
    Its value is a float."""

    model: int
    density: float


@dataclass(frozen=True)
class Gram:
    """Per tensor: the float64 [rows, N, N] dot products of the task vectors, over rows of
    `row` entries of the flat tensor (None: one row, the whole tensor)."""

    row: int | None


Statistic = TopK | ModelThreshold | Gram


@dataclass
class ModelStream:
    """What a whole-model statistic's pass reads. Calling it yields every mergeable tensor once,
    as `MergeInputs`. Where the engine merges slice by slice on CPU, `views()` yields them
    instead as `accel.slicing.SlicedTensor` views of the inputs in their own dtype (no copy,
    the fused kernels read them), else `views` is None. `entries`: how many entries each model
    has."""

    inputs: Callable[[], Any]
    views: Callable[[], Any] | None = None
    entries: int = 0

    def __call__(self):
        return self.inputs()


@dataclass
class MergeInputs:
    """Everything a method sees for one tensor (or for a part of it, where the method is
    element-wise), already on the compute device and dtype.

    `stats` holds the statistics the method declared (`merge_method(statistics=...,
    model_statistics=...)`), by the names it gave them, computed by the engine over the whole
    tensor or model (a name whose statistic was None maps to None). None: nothing was
    computed, and the tensors are whole: the method computes what it needs from them."""

    key: str
    base: torch.Tensor | None
    models: list[torch.Tensor]
    # For random methods, one 32-bit key per model, from the seed, the tensor's name and the
    # model's index; draws are a hash of (key, entry index) (see `ops.keep_lanes`), so they do
    # not depend on how the tensor is split.
    seeds: list[int] | None = None
    offset: int = 0  # the flat index of these tensors' first entry in the whole tensor
    shape: tuple[int, ...] | None = None  # the whole tensor's (None: the tensors' own)
    stats: dict[str, Any] | None = None
    # The caller hands over the tensors, so task vectors may be computed in place over the
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
            except HyperparameterError as err:  # our own check, given its context here
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
    fn: Callable[..., "torch.Tensor"]
    paper: str
    needs: Needs
    grid: dict[str, list]
    hyperparameters: dict[str, Hyperparameter]
    returns: Literal["delta", "weights"]  # a merged task vector, or merged weights
    random: bool = False
    # The merged value at each position depends only on the inputs at that position (given the
    # declared statistics), so on CPU the engine merges each tensor slice by slice, converting
    # the inputs to the compute dtype one cache-sized slice at a time.
    elementwise: bool = False
    # whole_if(kwargs) -> True where a configuration needs whole tensors after all (e.g. a
    # rescale to each tensor's L1 norm): the engine then merges tensor by tensor.
    whole_if: Callable[[dict[str, Any]], bool] | None = None
    # statistics(hp, shape) -> {name: Statistic or None}: what the method needs over each whole
    # tensor (hp: the hyperparameters at that tensor); model_statistics(kwargs) -> {name:
    # Statistic}: over the whole model. The engine computes them into `MergeInputs.stats`.
    statistics: Callable[[dict[str, Any], tuple[int, ...]], dict[str, Any]] | None = None
    model_statistics: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # A method of the task-vector family: its row of configuration (`methods.family.Row`),
    # which the accelerator compiles (never the method's name).
    family: Any = None
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
            except HyperparameterError as err:  # the method's own check, named here
                raise HyperparameterError(f"method '{self.name}': {err}") from None
        return kwargs


_REGISTRY: dict[str, MergeMethod] = {}
_ALIASES: dict[str, str] = {}


def _annotation(fn: Callable, p: inspect.Parameter) -> Any:
    """A parameter's annotation, evaluated alone: `typing.get_type_hints` would evaluate the
    return annotation too (`torch.Tensor`), importing torch to list the methods."""
    hint = p.annotation
    if hint is inspect.Parameter.empty:
        return float
    if isinstance(hint, str):
        namespace = {"Literal": Literal, "list": list, "float": float, "int": int,
                     "bool": bool, "str": str}
        hint = eval(hint, {**inspect.unwrap(fn).__globals__, **namespace})  # noqa: S307
    return hint


def _hyperparameters(fn: Callable, per_model: tuple[str, ...], ranges: dict[str, Interval],
                     helps: dict[str, str]) -> dict[str, Hyperparameter]:
    result = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        name = p.name.rstrip("_")
        hint = _annotation(fn, p)
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
                 returns: Literal["delta", "weights"] = "delta",
                 random: bool = False, aliases: tuple[str, ...] = (),
                 helps: dict[str, str] | None = None,
                 check: Callable[[dict[str, Any]], None] | None = None,
                 elementwise: bool = False, whole_if: Callable | None = None,
                 statistics: Callable | None = None, model_statistics: Callable | None = None,
                 family: Any = None, linear: str | None = None) -> Callable:
    """Register a merge method. See the module docstring for an example.

    `linear` names a global hyperparameter (e.g. "lambda") that the method multiplies its
    merged task vector by as its last step, so that a sweep over it can reuse one merge.

    `elementwise=True` promises that the function, given the parts of every input at the same
    positions, returns the merged part (so it must not look at shapes or whole-tensor
    statistics, except those it declares with `statistics`, which it finds in `x.stats`).
    """
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
                                      hyperparameters=hps, returns=returns, random=random,
                                      aliases=aliases, check=check, elementwise=elementwise,
                                      whole_if=whole_if, statistics=statistics,
                                      model_statistics=model_statistics, family=family,
                                      linear=linear)
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return register
