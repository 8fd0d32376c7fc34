"""Merging in memory: task vectors computed once, then one merge per grid point, no disk.

The same method definitions as the streaming engine: each tensor is merged by the registered
method's function (`spec.fn(MergeInputs(...), **hp)`) with the hyperparameters checked by
`spec.resolve`, per-layer settings evaluated by the engine's `_specialize`, LiNeS, the
method's declared statistics (`mergezoo.merge.statistics`), with the top-k cuts cached per
(expert, tensor, k), and the engine's per-tensor random seeds. What a grid repeats is done once per grid:

- task vectors (expert - base, in the compute dtype) are computed when the object is built;
- a method registered with `linear="lambda"` multiplies its merged task vector by lambda as
  its last step, so a lambda sweep merges once and scales per point (bit for bit the same as
  merging at that lambda); the unscaled merges are kept in a cache bounded by bytes;
- the exact top-k cut of each task vector (TIES, Breadcrumbs) is cached per density.

Example:
    >>> tv = TaskVectors(base_state, [expert_a, expert_b])             # doctest: +SKIP
    >>> for lam in [0.5, 1.0, 1.5]:                                    # doctest: +SKIP
    ...     merged = tv.merge("ties", {"density": 0.2, "lambda": lam})
    >>> tv.select([0]).merge("task_arithmetic")                       # doctest: +SKIP
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mergezoo.errors import BadTensorError, IncompatibleModelsError, RecipeError
from mergezoo.merge import statistics
from mergezoo.merge.accel import kernels
from mergezoo.merge.engine import _specialize, check_compatible, check_counts, pick_device
from mergezoo.merge.layers import LiNeS, layer_positions
from mergezoo.merge.registry import get_method
from mergezoo.merge.spec import MergeInputs, MergeMethod, ModelStream
from mergezoo.merge.accel.slicing import SlicedTensor, merge_sliced, new_scratch
from mergezoo.merge.accel.threads import torch_threads
from mergezoo.merge.topk import TopKCut
from mergezoo.merge.sources import StateDictSource, TensorSource, is_lora_folder, open_source

StateDict = dict[str, torch.Tensor]
DEFAULT_CACHE_BYTES = 1 << 30  # unscaled merged task vectors kept for lambda sweeps


@dataclass
class _Shared:
    """What every view (`TaskVectors.select`) of the same experts shares."""

    dev: torch.device
    dtype: torch.dtype
    reference: StateDict  # the base, or the first expert without one: keys, dtypes, integers
    base: StateDict | None  # float tensors of the base, in the compute dtype on the device
    weights: list[StateDict | None]  # the experts as given (None: only a task vector)
    deltas: list[StateDict] | None  # float task vectors, in the compute dtype on the device
    labels: list[str]
    float_keys: list[str]
    positions: dict[str, float]
    cache_bytes: int
    merged: OrderedDict = field(default_factory=OrderedDict)  # LRU of unscaled merges
    merged_bytes: int = 0
    cuts: dict = field(default_factory=dict)  # (expert, key, k) -> TopKCut
    states: dict = field(default_factory=dict)  # whole-model statistics
    zeros: torch.Tensor | None = None  # the zero "base" of slice-by-slice merges of deltas
    scratch: dict = field(default_factory=dict)  # thread -> inputs -> slice buffers
    seen_ks: dict = field(default_factory=dict)  # (expert, key) -> the ks cut so far
    sorted_bits: dict = field(default_factory=dict)  # (expert, key) -> sorted magnitude bits
    sorted_bytes: int = 0  # bounded by cache_bytes, like the merges

    _pool: ThreadPoolExecutor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, size: int) -> bool:
        """Count `size` more bytes of sorted magnitudes, if they fit in `cache_bytes`."""
        with self._lock:
            if self.sorted_bytes + size > self.cache_bytes:
                return False
            self.sorted_bytes += size
            return True

    def pool(self, workers: int) -> ThreadPoolExecutor:
        """The compute threads of slice-by-slice merges, kept for the next merge."""
        if self._pool is None or self._pool._max_workers != workers:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix="mergezoo-memory")
        return self._pool

    def zero(self, n: int) -> torch.Tensor:
        if self.zeros is None or self.zeros.numel() < n:
            self.zeros = torch.zeros(n, dtype=self.dtype)
        return self.zeros[:n]

    def weight(self, i: int, key: str) -> torch.Tensor:
        """Expert `i`'s weights for `key` in the compute dtype: as given, else base + delta."""
        given = self.weights[i]
        if given is not None:
            return given[key].to(self.dev, dtype=self.dtype, copy=True)
        return self.base[key] + self.deltas[i][key]

    def remember(self, key: tuple, value: StateDict) -> None:
        size = sum(t.numel() * t.element_size() for t in value.values())
        if size > self.cache_bytes:
            return
        self.merged[key] = value
        self.merged_bytes += size
        while self.merged_bytes > self.cache_bytes:
            _, old = self.merged.popitem(last=False)
            self.merged_bytes -= sum(t.numel() * t.element_size() for t in old.values())


class _WholeTensorView(statistics.WholeTensorView):
    """The statistics' view of one tensor's whole task vectors, with each top-k cut cached
    per (expert, tensor, k) across merges."""

    def __init__(self, shared: _Shared, key: str, experts: list[int]) -> None:
        super().__init__([shared.deltas[i][key] for i in experts])
        self.shared, self.key, self.experts = shared, key, experts

    def top_k_cut(self, i: int, k: int) -> TopKCut:
        ident = (self.experts[i], self.key, k)
        found = self.shared.cuts.get(ident)
        if found is None:
            found = self.shared.cuts[ident] = super().top_k_cut(i, k)
        return found


class _CachingSlicedTensor(SlicedTensor):
    """The engine's slice-by-slice view, with each task vector's top-k cut over the slices
    cached per (expert, tensor, k) across merges. When a second k is asked for the same task
    vector (a density sweep), its magnitudes are sorted once, and every further cut is a
    binary search in them (plus a count of the tied entries per slice)."""

    def __init__(self, shared: _Shared, experts: list[int], *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.shared, self.experts = shared, experts

    def top_k_cuts(self, ks: list[int | None], of: list[int] | None = None) -> list:
        sh = self.shared
        of = list(range(len(ks))) if of is None else of
        ids = [("sliced", self.experts[i], self.key, k) for k, i in zip(ks, of)]
        missing = []
        for j, (k, i) in enumerate(zip(ks, of)):
            if k is None or ids[j] in sh.cuts:
                continue
            tensor = (self.experts[i], self.key)
            ordered = sh.sorted_bits.get(tensor)
            if ordered is None and sh.seen_ks.get(tensor, set()) - {k} and sh.reserve(4 * self.n):
                bits = self.magnitude_bits(i)
                ordered = [np.sort(bits(part).numpy()) for part in self.parts]
                sh.sorted_bits[tensor] = ordered
            sh.seen_ks.setdefault(tensor, set()).add(k)
            if ordered is not None:
                sh.cuts[ids[j]] = _cut_from_sorted(ordered, k)
            else:
                missing.append(j)
        if missing:
            found = super().top_k_cuts([ks[j] for j in missing], of=[of[j] for j in missing])
            for j, cut in zip(missing, found):
                sh.cuts[ids[j]] = cut
        return [None if k is None else sh.cuts[i] for k, i in zip(ks, ids)]


def _cut_from_sorted(parts: list[np.ndarray], k: int) -> TopKCut:
    """The cut `TopKCut.find` gives (the k-th largest magnitude; of the entries equal to it,
    the first ones in slice order) from each slice's sorted magnitude bits: the threshold is
    the largest bit pattern that at least k entries reach (a binary search over the patterns,
    counting in every slice by binary search)."""
    def at_least(v: int) -> int:
        value = np.int32(v)
        return sum(p.size - int(np.searchsorted(p, value, "left")) for p in parts)

    if len(parts) == 1:
        low = high = int(parts[0][parts[0].size - k])
    else:
        low, high = 0, (1 << 31) - 1  # at_least(low) >= k > at_least(high + 1)
    while low < high:
        mid = (low + high + 1) // 2
        if at_least(mid) >= k:
            low = mid
        else:
            high = mid - 1
    threshold = np.int32(low)
    above = [p.size - int(np.searchsorted(p, threshold, "right")) for p in parts]
    equal = [p.size - int(np.searchsorted(p, threshold, "left")) - a for p, a in zip(parts, above)]
    ties = k - sum(above)
    allowed = []
    for count in equal:  # the tied entries that belong to the top k come first
        allowed.append(min(ties, count))
        ties -= allowed[-1]
    return TopKCut(int(threshold), allowed, equal)


class TaskVectors:
    """Task vectors computed once; then one merge per grid point, no disk.

    `base` may be None for methods that do not use it (average, slerp of two models).
    `device`: "auto", "cpu" or "cuda" (see `engine.pick_device`); `dtype` is the compute
    dtype (the engine's default, float32). `cache_bytes` bounds the unscaled merges kept for
    sweeps over a method's linear hyperparameter (lambda), and, separately, the sorted task-vector
    magnitudes kept for density sweeps (4 bytes per entry).

    Example:
        >>> tv = TaskVectors(base, [a, b, c], labels=["a", "b", "c"])    # doctest: +SKIP
        >>> soup = tv.select([0, 1]).merge("average")                   # doctest: +SKIP
    """

    def __init__(self, base: StateDict | None, experts: list[StateDict], *,
                 labels: list[str] | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 _deltas: list[StateDict | None] | None = None) -> None:
        n = len(experts)
        if n == 0:
            raise RecipeError("no models to merge: give at least one expert")
        labels = list(labels) if labels is not None else [f"expert {i}" for i in range(n)]
        if len(labels) != n:
            raise RecipeError(f"{len(labels)} labels for {n} experts")
        given = _deltas or [None] * n
        dev = pick_device(device)
        # The reference gives the keys, dtypes and integer tensors: the base, else expert 0.
        reference = base if base is not None else experts[0]
        if reference is None:
            raise RecipeError("task vectors need their base model")
        ref_src = StateDictSource(reference, "base" if base is not None else labels[0])
        check_compatible(ref_src, [StateDictSource(e, label) for e, label in zip(experts, labels)
                                   if e is not None and e is not reference])
        float_keys = [k for k, t in reference.items() if t.is_floating_point()]
        floats = StateDictSource({k: reference[k] for k in float_keys}, ref_src.label)
        check_compatible(floats, [StateDictSource(d, f"{label} (task vector)")
                                  for d, label in zip(given, labels) if d is not None])
        base32 = None if base is None else {
            k: base[k].to(dev, dtype=dtype) for k in float_keys}
        deltas = None
        if base32 is not None:
            deltas = []
            for e, d in zip(experts, given):
                if d is not None:  # given task vectors (LoRA: B @ A * scaling) are used as they are
                    deltas.append({k: d[k].to(dev, dtype=dtype) for k in float_keys})
                else:
                    deltas.append({k: e[k].to(dev, dtype=dtype) - base32[k] for k in float_keys})
        self._shared = _Shared(dev=dev, dtype=dtype, reference=reference, base=base32,
                               weights=list(experts), deltas=deltas, labels=labels,
                               float_keys=float_keys, positions=layer_positions(list(reference)),
                               cache_bytes=cache_bytes)
        self._experts = list(range(n))

    @classmethod
    def from_task_vectors(cls, base: StateDict, deltas: list[StateDict], **kw) -> "TaskVectors":
        """Task vectors already computed (e.g. exact LoRA deltas); experts are base + delta
        where a method needs their weights."""
        if base is None:
            raise RecipeError("task vectors need their base model")
        return cls(base, [None] * len(deltas), _deltas=list(deltas), **kw)

    @classmethod
    def from_folders(cls, base_dir: str | Path | None, expert_dirs: list[str | Path], *,
                     component: str | None = None, allow_pickle: bool = False,
                     **kw) -> "TaskVectors":
        """Local model folders; an expert folder may be a PEFT LoRA adapter on the base (its
        task vector is the exact full delta B @ A * scaling computed in float32 from the
        factors, via `mergezoo.merge.lora`, never (W + dW) - W), a full fine-tune, or a
        diffusers component folder (`component`, e.g. "unet")."""
        def weights_dir(path: Path) -> Path:
            # A diffusers LoRA repo keeps every component's factors in one root file.
            if component and not (path / component).is_dir() and is_lora_folder(path):
                return path
            if component and not (path / component).is_dir():
                raise RecipeError(f"{path}: has no component folder '{component}'")
            return path / component if component else path

        base_src = None
        if base_dir is not None:
            base_src = open_source(weights_dir(Path(base_dir)), f"base '{base_dir}'",
                                   allow_pickle=allow_pickle)
        base = _read_all(base_src) if base_src is not None else None
        labels = kw.pop("labels", None) or [f"expert '{p}'" for p in expert_dirs]
        experts: list[StateDict | None] = []
        deltas: list[StateDict | None] = []
        for path, label in zip(expert_dirs, labels):
            src = open_source(weights_dir(Path(path)), label, allow_pickle=allow_pickle,
                              base_source=base_src, component=component)
            if hasattr(src, "delta") and hasattr(src, "layers"):  # a LoRA adapter on the base
                experts.append(None)
                deltas.append(_lora_deltas(src, base))
            else:
                experts.append(_read_all(src))
                deltas.append(None)
        return cls(base, experts, labels=labels, _deltas=deltas, **kw)

    @property
    def n_models(self) -> int:
        return len(self._experts)

    @property
    def labels(self) -> list[str]:
        return [self._shared.labels[i] for i in self._experts]

    @property
    def keys(self) -> list[str]:
        return list(self._shared.reference)

    def select(self, indices: list[int]) -> "TaskVectors":
        """A view over some experts (in the order given), sharing the cached task vectors."""
        for i in indices:
            if not 0 <= i < self.n_models:
                raise RecipeError(f"expert index {i} is out of range (0..{self.n_models - 1})")
        view = object.__new__(TaskVectors)
        view._shared = self._shared
        view._experts = [self._experts[i] for i in indices]
        return view

    def merge(self, method: str | MergeMethod, params: dict | None = None,
              model_params: list[dict] | None = None, *, lines: LiNeS | None = None,
              seed: int = 0, out_dtype: torch.dtype | None = None) -> StateDict:
        """Full merged weights (base + merged delta for delta methods), same keys as the base,
        dtype `out_dtype` or the base's; `params` use recipe names ("lambda", "density"),
        checked with the method's `resolve` (same errors as the engine)."""
        sh = self._shared
        spec = method if isinstance(method, MergeMethod) else get_method(method)
        n = self.n_models
        check_counts(spec, n, sh.base is not None)
        kwargs = spec.resolve(params or {}, model_params or [], n)
        if lines is not None and spec.returns != "delta":
            raise RecipeError(
                f"LiNeS scales task vectors; method '{spec.name}' does not produce one")
        use_base = sh.base is not None and bool(spec.needs.base)
        linear = spec.hyperparameters[spec.linear].arg if spec.linear else None
        # Everything but the linear hyperparameter decides the unscaled merge.
        fixed = {k: v for k, v in kwargs.items() if k != linear}
        ident = (spec.name, tuple(self._experts), repr(sorted(fixed.items())),
                 seed if spec.random else None)
        state = self._prepare(spec, kwargs, ident) if spec.model_statistics else None
        cached = sh.merged.get(ident) if linear else None
        if cached is not None:
            sh.merged.move_to_end(ident)
        fresh: StateDict = {}
        out: StateDict = {key: ref.clone() for key, ref in sh.reference.items()
                          if not ref.is_floating_point()}  # integers: from the reference

        def merge_key(key: str) -> torch.Tensor:
            hp = _specialize(spec, kwargs, key, sh.positions[key])
            if linear:
                lam = hp[linear]
                unscaled = cached[key] if cached is not None else None
                if unscaled is None:
                    unscaled = fresh[key] = self._merge_one(spec, {**hp, linear: 1.0}, key,
                                                            use_base, state, seed)
                # The method's own last step, `mixed.mul_(lambda_)` (skipped at 1); the
                # cached tensor itself is never changed.
                owned = lam != 1
                merged = unscaled * lam if owned else unscaled
            else:
                merged, owned = self._merge_one(spec, hp, key, use_base, state, seed), True
            if spec.returns == "delta":  # the engine's (merged * LiNeS scale) + base
                scale = lines.scale(key, sh.positions[key]) if lines else 1.0
                if scale != 1.0:
                    merged, owned = (merged.mul_(scale) if owned else merged * scale), True
                merged = merged.add_(sh.base[key]) if owned else merged + sh.base[key]
            self._check_finite(key, merged, use_base)
            return merged.to(out_dtype or sh.reference[key].dtype)

        workers = torch.get_num_threads()
        if self._sliced(spec, use_base) and spec.slices(kwargs) and workers > 1:
            # Most tensors are one slice: merge several tensors side by side, each on one
            # intra-op thread (torch releases the GIL inside operations and kernels).
            with torch_threads(1):
                merged = list(sh.pool(workers).map(merge_key, sh.float_keys))
        else:
            merged = [merge_key(key) for key in sh.float_keys]
        out.update(zip(sh.float_keys, merged))
        out = {key: out[key] for key in sh.reference}  # the reference's order
        if linear and cached is None:
            sh.remember(ident, fresh)
        return out

    def _inputs(self, spec: MergeMethod, key: str, use_base: bool, seed: int) -> MergeInputs:
        """One tensor of every selected expert, as the engine hands it to a method: fresh
        copies the method may work on in place (`owned`)."""
        sh = self._shared
        base = sh.base[key].clone() if use_base else None
        deltas = [sh.deltas[i][key].clone() for i in self._experts] \
            if use_base and spec.returns == "delta" else None
        # Methods that return weights may read the experts themselves (average, slerp).
        models = [sh.weight(i, key) for i in self._experts] if deltas is None else []
        if deltas is None and use_base:  # the exact task vectors (LoRA), not weight - base
            deltas = [sh.deltas[i][key].clone() for i in self._experts]
        seeds = ([zlib.crc32(f"{seed}/{key}/{i}".encode()) for i in range(len(self._experts))]
                 if spec.random else None)
        return MergeInputs(key=key, base=base, models=models, seeds=seeds, owned=True,
                           _deltas=deltas)

    def _merge_one(self, spec: MergeMethod, hp: dict, key: str, use_base: bool, state: Any,
                   seed: int) -> torch.Tensor:
        if self._sliced(spec, use_base) and spec.slices(hp):
            return self._merge_sliced(spec, hp, key, state, seed)
        x = self._inputs(spec, key, use_base, seed)
        if spec.statistics is not None and use_base:
            # Over the cached task vectors, with the top-k cuts cached across merges.
            x.stats = statistics.for_tensor(
                spec, hp, _WholeTensorView(self._shared, key, self._experts), state)
        elif state:
            x.stats = dict(state)
        # No blanket except: a method's own checks raise named errors; anything else is a bug
        # or out-of-memory and keeps its traceback.
        return spec.fn(x, **hp)

    def _sliced(self, spec: MergeMethod, use_base: bool) -> bool:
        """Element-wise task-vector methods on CPU merge as the engine does there: slice by
        slice (with the fused kernels where they run), over the cached task vectors."""
        return (spec.elementwise and spec.returns == "delta" and use_base
                and self._shared.dev.type == "cpu")

    def _merge_sliced(self, spec: MergeMethod, hp: dict, key: str, state: Any,
                      seed: int) -> torch.Tensor:
        """The merged task vector of `key` by the engine's slice-by-slice path, given a zero
        base and the task vectors as the models: the method computes each model minus the
        base, which is then the cached task vector exactly (also a LoRA's exact delta), and
        its result plus a zero base is its merged task vector."""
        sh = self._shared
        shape = sh.base[key].shape
        deltas = [sh.deltas[i][key].reshape(-1) for i in self._experts]
        inputs = [sh.zero(deltas[0].numel())] + deltas
        # `load` says whether the kernels run here at all (llvmlite, these dtypes).
        fused = spec.family is not None and sh.dtype == torch.float32 \
            and kernels.load({sh.dtype}, {sh.dtype}, len(deltas), True)
        out = torch.empty(deltas[0].numel(), dtype=sh.dtype)
        # Slice buffers for the torch functions, one set per thread (tensors are merged on
        # several threads at once, see `merge`).
        buffers = sh.scratch.setdefault(threading.get_ident(), {})
        scratch = buffers.setdefault(len(inputs), [new_scratch(len(inputs), sh.dtype)])
        seeds = ([zlib.crc32(f"{seed}/{key}/{i}".encode()) for i in range(len(deltas))]
                 if spec.random else None)
        # One intra-op thread per operation, as in the engine; the caller spreads tensors over
        # its threads.
        with torch_threads(1):
            view = _CachingSlicedTensor(sh, self._experts, key, inputs, has_base=True,
                                        dtype=sh.dtype, pool=None, fused=fused,
                                        shape=tuple(shape))
            merge_sliced(spec, hp, view, out, seeds=seeds, model_stats=state, scratch=scratch)
        return out.view(shape)

    def _prepare(self, spec: MergeMethod, kwargs: dict, ident: tuple) -> Any:
        """The method's whole-model statistics (e.g. TIES's model-wide thresholds), once per
        (method, experts, hyperparameters)."""
        sh = self._shared
        if ident not in sh.states:
            use_base = sh.base is not None and bool(spec.needs.base)

            def tensors() -> Iterator[MergeInputs]:
                for key in sh.float_keys:
                    yield self._inputs(spec, key, use_base, 0)
            entries = sum(sh.reference[k].numel() for k in sh.float_keys)
            sh.states[ident] = statistics.for_model(
                spec, kwargs, ModelStream(tensors, None, entries=entries))
        return sh.states[ident]

    def _check_finite(self, key: str, merged: torch.Tensor, use_base: bool) -> None:
        if bool(torch.isfinite(merged.sum())) or bool(torch.isfinite(merged).all()):
            return
        sh = self._shared
        named = ([("base", sh.base[key])] if use_base else []) + \
            [(sh.labels[i], sh.deltas[i][key] if sh.deltas else sh.weight(i, key))
             for i in self._experts]
        for label, tensor in named:
            if not bool(torch.isfinite(tensor).all()):
                raise BadTensorError(f"{label}: tensor '{key}' contains NaN or Inf values")
        raise BadTensorError(f"tensor '{key}': the merge produced NaN or Inf values")


def merge_state_dicts(method: str, base: StateDict | None, experts: list[StateDict],
                      params: dict | None = None, **kw) -> StateDict:
    """One-shot convenience: TaskVectors(base, experts).merge(method, params, **kw).

    Keyword arguments go to the constructor (labels, device, dtype) or to `merge`
    (model_params, lines, seed, out_dtype)."""
    init = {k: kw.pop(k) for k in ("labels", "device", "dtype") if k in kw}
    return TaskVectors(base, experts, cache_bytes=0, **init).merge(method, params, **kw)


def _read_all(src: TensorSource) -> StateDict:
    return {k: src.get(k) for k in src.keys()}


def _lora_deltas(src: Any, base: StateDict) -> StateDict:
    """A LoRA expert's exact task vector: B @ A * scaling in float32 from the factors
    (`LoraSource.delta`); a tensor the adapter replaces (modules_to_save) minus the base;
    zero elsewhere."""
    out = {}
    for key, b in base.items():
        if not b.is_floating_point():
            continue
        delta = src.delta(key)
        if delta is None:
            delta = src.get(key).to(torch.float32) - b.to(torch.float32) \
                if key in src.replacements else torch.zeros(b.shape, dtype=torch.float32)
        out[key] = delta
    return out
