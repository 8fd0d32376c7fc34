"""The streaming merge engine.

Every input is opened lazily; for each tensor name the engine reads that tensor from every
input (on a background thread, while the previous tensor is being merged), merges it on the
compute device, and streams the result to disk on a second thread. Peak memory is about two
sets of (N+1) input tensors plus the method's temporaries, whatever the size of the model.
On CPU, element-wise methods keep the inputs in their own dtype and merge slice by slice on
several threads (see `mergezoo.merge.accel.slicing`); other methods and CUDA get whole tensors in
the compute dtype.

Example:
    >>> from mergezoo.merge.sources import open_source
    >>> result = merge_sources("ties", [open_source("a"), open_source("b")],       # doctest: +SKIP
    ...                        base=open_source("base"), out_dir="merged",
    ...                        params={"density": 0.2})
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from mergezoo.errors import (BadCheckpointError, BadTensorError, IncompatibleModelsError,
                             RecipeError, UnsafePathError)
from mergezoo.merge import statistics
from mergezoo.merge.accel import kernels, plans
from mergezoo.merge.accel.slicing import SlicedTensor, merge_sliced, new_scratch
from mergezoo.merge.buffers import BufferRing
from mergezoo.merge.layers import LiNeS, evaluate_setting, layer_positions
from mergezoo.merge.options import MergeOptions
from mergezoo.merge.registry import get_method
from mergezoo.merge.spec import MergeInputs, MergeMethod, ModelStream
from mergezoo.merge.accel.threads import torch_threads
from mergezoo.merge.sources import TensorSource
from mergezoo.merge.writer import ShardedSafetensorsWriter, atomic_output_dir
from mergezoo.zoo.paths import leaves

logger = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 20
# Output dtypes with a narrower exponent range than float32 (bfloat16 has float32's).
NARROW_DTYPES = (torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass
class MergeResult:
    """What a merge wrote and what it cost."""

    out_dir: Path
    method: str
    files: list[str]
    sha256: dict[str, str]
    n_tensors: int
    n_parameters: int
    seconds: float
    device: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    lora_errors: dict[str, float] | None = None  # relative error per layer, for LoRA output
    base_path: Path | None = None  # where the base model was read from (local or Hub cache)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is CUDA when present, else CPU; anything else must be a valid torch device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise RecipeError(f"unknown device {device!r} (use auto, cpu or cuda)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device 'cuda' was asked for, but CUDA is not available here")
    return dev


def check_compatible(reference: TensorSource, others: list[TensorSource]) -> None:
    """Raise IncompatibleModelsError listing every missing/extra tensor and shape mismatch."""
    ref_keys = set(reference.keys())
    problems = []
    for src in others:
        keys = set(src.keys())
        for key in sorted(ref_keys - keys):
            problems.append(f"{src.label}: tensor '{key}' is missing (present in {reference.label})")
        for key in sorted(keys - ref_keys):
            problems.append(f"{src.label}: extra tensor '{key}' (absent from {reference.label})")
        for key in sorted(ref_keys & keys):
            if tuple(src.shape(key)) != tuple(reference.shape(key)):
                problems.append(f"{src.label}: tensor '{key}' has shape {tuple(src.shape(key))}, "
                                f"{reference.label} has {tuple(reference.shape(key))}")
    if problems:
        more = len(problems) - MAX_LISTED_PROBLEMS
        listed = problems[:MAX_LISTED_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        raise IncompatibleModelsError("the models cannot be merged:\n  " + "\n  ".join(listed))


def check_counts(spec: MergeMethod, n_models: int, has_base: bool) -> None:
    if n_models == 0:
        raise RecipeError("no models to merge: give at least one expert")
    if spec.needs.base is True and not has_base:
        raise RecipeError(f"method '{spec.name}' needs a base model (--base, or base_model: in "
                          "the recipe)")
    if n_models < spec.needs.min_models:
        raise RecipeError(f"method '{spec.name}' needs at least {spec.needs.min_models} models, "
                          f"got {n_models}")
    if spec.needs.max_models is not None and n_models > spec.needs.max_models:
        raise RecipeError(f"method '{spec.name}' merges at most {spec.needs.max_models} models "
                          f"(besides the base), got {n_models}")


def _specialize(spec: MergeMethod, kwargs: dict[str, Any], key: str, position: float) -> dict:
    """Evaluate per-layer settings (gradients, filter rules) for one tensor."""
    out = {}
    for hp in spec.hyperparameters.values():
        value = kwargs[hp.arg]
        if hp.per_model:
            out[hp.arg] = [evaluate_setting(v, key, position) for v in value]
        else:
            out[hp.arg] = evaluate_setting(value, key, position)
    return out


PAGE = 4096


def _touch_pages(tensor: torch.Tensor) -> torch.Tensor:
    """Read one byte of every page of a contiguous tensor, so that a memory-mapped file's pages
    are read and mapped now (on the reader thread), not when the merge first touches them."""
    if tensor.is_contiguous() and tensor.numel():
        tensor.reshape(-1).view(torch.uint8)[::PAGE].max()
    return tensor


def _checked(src: TensorSource, key: str, shape: tuple[int, ...],
             raw: bool = False) -> torch.Tensor:
    """`src.get(key)`, refused unless it has the shape the source declared (the one the merge
    was planned with) and, when its bytes are read `raw` by the slices and the kernels, the
    declared dtype too: they read exactly that many entries of that width, and a source whose
    data is shorter would have them read past its end. (A whole tensor is converted to the
    compute dtype as it is copied: a LoRA expert's exact float32 task vector is fine there.)"""
    tensor = src.get(key)
    if tuple(tensor.shape) != tuple(shape) or (raw and tensor.dtype != src.dtype(key)):
        raise BadCheckpointError(f"{src.label}: tensor '{key}' holds {tuple(tensor.shape)} "
                                 f"{tensor.dtype}, but its header declares {tuple(shape)} "
                                 f"{src.dtype(key)}")
    return tensor


def _exact_deltas(source: TensorSource) -> bool:
    """Whether `source` gives its exact task vector per tensor (`LoraSource.delta`)."""
    return callable(getattr(source, "delta", None))


def _first_bad_input(key: str, sources: list[TensorSource]) -> str | None:
    """The input whose tensor `key` holds NaN or Inf, read afresh (the engine's copies have
    been worked on in place by then)."""
    for src in sources:
        t = src.get(key)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return src.label
    return None


def merge_sources(method: str | MergeMethod, models: list[TensorSource], *,
                  out_dir: str | Path, base: TensorSource | None = None,
                  params: dict[str, Any] | None = None,
                  model_params: list[dict[str, Any]] | None = None,
                  hyperparameters: dict[str, Any] | None = None,
                  lines: LiNeS | None = None,
                  dtype: torch.dtype = torch.float32, out_dtype: torch.dtype | None = None,
                  seed: int = 0, options: MergeOptions | None = None,
                  weights_subdir: str | None = None,
                  prepare_output: Callable[[Path], None] | None = None,
                  finalize_output: Callable[[Path, "MergeResult"], None] | None = None,
                  output_delta: bool = False,
                  **option_fields: Any) -> MergeResult:
    """Merge `models` (and `base`) tensor by tensor into `out_dir`, atomically.

    `options` (device, kernels, shard size, overwrite, progress; see `MergeOptions`) may also
    be given as keywords (`device="cpu", progress=False`). The hyperparameters come either as
    the user wrote them (`params`, `model_params`: checked here) or already checked by
    `MergeMethod.resolve` (`hyperparameters`, as a merge plan passes them: not checked twice).

    Inputs that know their exact task vector (a LoRA expert's B @ A * scaling in float32,
    `LoraSource.delta`) give it to the method instead of their weights minus the base; such
    merges run tensor by tensor. With `output_delta`, a task-vector method writes its merged
    task vector (LiNeS-scaled) instead of the base plus it (`output: lora` factorises that).

    `prepare_output(tmp_dir)` is called before the weights are written, to add config and
    tokenizer files, and `finalize_output(tmp_dir, result)` after them, before the folder is
    moved into place; `weights_subdir` puts the weights in a sub-folder (a diffusers component).
    """
    spec = method if isinstance(method, MergeMethod) else get_method(method)
    options = MergeOptions.of(options, **option_fields)
    if hyperparameters is None:
        check_counts(spec, len(models), base is not None)
        kwargs = spec.resolve(params or {}, model_params or [], len(models))
    elif params or model_params:
        raise TypeError("merge_sources: give params/model_params or hyperparameters, not both")
    else:
        kwargs = hyperparameters
    if lines is not None and spec.returns != "delta":
        raise RecipeError(f"LiNeS scales task vectors; method '{spec.name}' does not produce one")
    if output_delta and (spec.returns != "delta" or base is None):
        raise RecipeError(f"method '{spec.name}' does not produce a task vector to write")
    reference = base if base is not None else models[0]
    check_compatible(reference, [m for m in models if m is not reference])
    dev = pick_device(options.device)
    keys = reference.keys()
    positions = layer_positions(keys)
    # The base is read only by methods that use it (average uses it as a template at most).
    use_base = base is not None and bool(spec.needs.base)
    inputs = ([base] if use_base else []) + list(models)
    plan = {}
    for key in keys:
        in_dtype = reference.dtype(key)
        floating = in_dtype.is_floating_point
        plan[key] = (tuple(reference.shape(key)), out_dtype if (floating and out_dtype) else in_dtype)

    # Element-wise methods merge on CPU slice by slice from the inputs' own dtype; the others
    # get whole tensors converted to the compute dtype as they are read.
    # Exact task vectors (LoRA experts) and a written task vector need whole tensors.
    exact = use_base and any(_exact_deltas(m) for m in models)
    sliced = spec.slices(kwargs) and dev.type == "cpu" and not exact and not output_delta
    merger = _TensorMerger(spec=spec, kwargs=kwargs, positions=positions, lines=lines, dev=dev,
                           dtype=dtype, use_base=use_base, seed=seed, sources=inputs,
                           sliced=sliced, exact=exact, add_base=not output_delta)
    float_keys = [k for k in keys if reference.dtype(k).is_floating_point]
    entries = sum(math.prod(plan[k][0]) for k in float_keys) * len(models)
    if sliced and plans.worth_it(spec.family, entries, options.kernels):
        merger.fused = kernels.load({reference.dtype(k) for k in float_keys},
                                    {plan[k][1] for k in float_keys}, len(models), use_base)
    in_ring = BufferRing(slots=len(inputs))

    def load(key: str, turn: int, whole: bool) -> list[torch.Tensor]:
        """Runs on the reader thread. safetensors maps files into memory and returns views of
        the mapping, so the disk is read when the bytes are first touched: copying here (into
        reused buffers, on CPU; into pinned memory, for CUDA) moves that reading off the
        compute thread, and gives the engine tensors it owns and may change in place."""
        if not reference.dtype(key).is_floating_point:
            return [_checked(reference, key, plan[key][0])]
        if dev.type != "cpu":
            return [_checked(src, key, plan[key][0]).pin_memory() for src in inputs]
        if not whole:  # slices are converted from the mapping itself: fault its pages in here
            return [_touch_pages(_checked(src, key, plan[key][0], raw=True)) for src in inputs]
        return [in_ring.take(turn, slot, plan[key][0], dtype).copy_(_checked(src, key, plan[key][0]))
                for slot, src in enumerate(inputs)]

    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergezoo-read")

    def prefetched(order: list[str], whole: bool) -> Iterator[tuple[str, list[torch.Tensor]]]:
        # Two buffer sets: the reader fills set i+1 while tensor i is merged from set i.
        pending = reader.submit(load, order[0], 0, whole) if order else None
        for i, key in enumerate(order):
            tensors = pending.result()
            pending = (reader.submit(load, order[i + 1], i + 1, whole)
                       if i + 1 < len(order) else None)
            yield key, tensors

    def whole_tensors() -> Iterator[MergeInputs]:
        for key, tensors in prefetched(float_keys, whole=True):
            yield merger.inputs(key, tensors)

    def tensor_views() -> Iterator[SlicedTensor]:
        for key, tensors in prefetched(float_keys, whole=False):
            yield merger.view(key, tensors)

    stream = ModelStream(whole_tensors, tensor_views if sliced else None,
                         entries=sum(math.prod(plan[k][0]) for k in float_keys))

    start = time.perf_counter()
    # Slice-by-slice merging runs each operation on one intra-op thread (see `torch_threads`)
    # and spreads the slices, and a per-tensor pass's task vectors, over as many Python threads
    # as torch had intra-op threads instead: torch releases the GIL inside each operation.
    merger.workers = torch.get_num_threads() if sliced else 1
    if merger.workers > 1:
        merger.pool = ThreadPoolExecutor(max_workers=merger.workers,
                                         thread_name_prefix="mergezoo-compute")
    try:
        with torch_threads(1 if sliced else None):
            merger.model_stats = statistics.for_model(spec, kwargs, stream)
            with atomic_output_dir(out_dir, overwrite=options.overwrite) as tmp:
                if prepare_output:
                    prepare_output(tmp)
                folder = tmp / weights_subdir if weights_subdir else tmp
                folder.mkdir(parents=True, exist_ok=True)
                stem = getattr(reference, "weights_stem", "model")
                files, sha, n_params = _write_weights(
                    folder, stem, plan, prefetched(keys, whole=not sliced), merger,
                    max_shard_size=options.max_shard_size, progress=options.progress)
                prefix = f"{weights_subdir}/" if weights_subdir else ""
                result = MergeResult(out_dir=Path(out_dir), method=spec.name,
                                     files=[prefix + f for f in files],
                                     sha256={prefix + k: v for k, v in sha.items()},
                                     n_tensors=len(keys), n_parameters=n_params, seconds=0.0,
                                     device=str(dev), hyperparameters=kwargs)
                if finalize_output:
                    finalize_output(tmp, result)
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        if merger.pool is not None:
            merger.pool.shutdown(wait=True)
    result.seconds = time.perf_counter() - start
    return result


def _write_weights(folder: Path, stem: str, plan: dict[str, tuple[tuple[int, ...], torch.dtype]],
                   tensors: Iterator[tuple[str, list[torch.Tensor]]], merger: "_TensorMerger", *,
                   max_shard_size: str | int,
                   progress: bool) -> tuple[list[str], dict[str, str], int]:
    """Merge every (key, inputs) of `tensors` and stream the results into safetensors shards
    in `folder` on a writer thread, while the next tensor is merged. Returns the files written,
    their sha256 and the number of parameters."""
    n_params = 0
    last_write = None
    out_ring = BufferRing(slots=1)  # one output being written, one being merged
    bar = tqdm(total=len(plan), unit="tensor", disable=not progress,
               desc=f"merge {merger.spec.name}")
    # The pool is left (waiting for a pending write) before the writer closes its file.
    with ShardedSafetensorsWriter(folder, stem, plan, max_shard_size,
                                  metadata={"merged_by": "mergezoo"}) as writer, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergezoo-write") as writer_pool:
        for i, (key, inputs) in enumerate(tensors):
            merged = merger.merge(key, inputs, out_ring.take(i, 0, *plan[key]))
            n_params += merged.numel()
            if last_write is not None:
                last_write.result()
            last_write = writer_pool.submit(writer.write, key, merged)
            bar.update(1)
        if last_write is not None:
            last_write.result()
        bar.close()
        return writer.finish(), dict(writer.sha256), n_params


@dataclass
class _TensorMerger:
    """Merges one tensor at a time with a resolved method, on the engine's device."""

    spec: MergeMethod
    kwargs: dict[str, Any]
    positions: dict[str, float]
    lines: LiNeS | None
    dev: torch.device
    dtype: torch.dtype
    use_base: bool
    seed: int
    sources: list[TensorSource]  # base first when used, as the tensors passed in
    sliced: bool  # element-wise, slice by slice, from the inputs' own dtype (CPU)
    model_stats: dict[str, Any] | None = None  # the method's whole-model statistics
    scratch: list[list[torch.Tensor]] | None = None  # slice buffers, a set per compute thread
    pool: ThreadPoolExecutor | None = None  # compute threads for slice-by-slice merging
    workers: int = 1
    fused: bool = False  # merge with the fused kernels (see kernels.worth_it)
    exact: bool = False  # task vectors from the sources that know them exactly (LoRA)
    add_base: bool = True  # False: write a task-vector method's merged task vector itself

    def seeds(self, key: str, n_models: int) -> list[int] | None:
        """For random methods, a 32-bit key per model from the merge seed, the tensor's name
        and the model's index. Draws hash (key, entry index), so each is reproducible whatever
        else is merged, and however the tensor is sliced or spread over threads."""
        if not self.spec.random:
            return None
        return [zlib.crc32(f"{self.seed}/{key}/{i}".encode()) for i in range(n_models)]

    def inputs(self, key: str, tensors: list[torch.Tensor]) -> MergeInputs:
        on_device = [t.to(self.dev, dtype=self.dtype, non_blocking=True) for t in tensors]
        base = on_device[0] if self.use_base else None
        models = on_device[1:] if self.use_base else on_device
        x = MergeInputs(key=key, base=base, models=models, seeds=self.seeds(key, len(models)),
                        owned=True)
        if self.exact and base is not None:
            # B @ A * scaling in float32 from the factors, not (W + dW) - W after rounding.
            deltas = []
            for src, model in zip(self.sources[1:], models):
                exact = src.delta(key) if _exact_deltas(src) and \
                    key not in getattr(src, "replacements", {}) else None
                deltas.append(model - base if exact is None
                              else exact.to(self.dev, dtype=self.dtype).reshape(base.shape))
            x._deltas = deltas
        return x

    def view(self, key: str, tensors: list[torch.Tensor]) -> SlicedTensor:
        """One tensor of every input, to merge slice by slice (see `SlicedTensor`)."""
        return SlicedTensor(key, tensors, has_base=self.use_base, dtype=self.dtype,
                            pool=self.pool, fused=self.fused)

    def merge(self, key: str, tensors: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """Merge one tensor into `out` (a CPU buffer of the output's shape and dtype)."""
        if not tensors[0].is_floating_point():  # integer buffers are copied from the reference
            return out.copy_(tensors[0])
        hp = _specialize(self.spec, self.kwargs, key, self.positions[key])
        scale = self.lines.scale(key, self.positions[key]) if self.lines else 1.0
        # No blanket except here: the inputs were checked (names, shapes, dtypes) before the
        # merge began, so an error raised inside a method is a bug or out-of-memory and keeps
        # its own type and traceback; only the checks below raise our named errors.
        if self.sliced:
            if self.scratch is None:  # a buffer set per compute thread
                self.scratch = [new_scratch(len(tensors), self.dtype)
                                for _ in range(self.workers)]
            view = self.view(key, tensors)
            finite = merge_sliced(self.spec, hp, view, out, model_stats=self.model_stats,
                                  scale=scale, seeds=self.seeds(key, view.n_models),
                                  scratch=self.scratch)
        else:
            finite = self._merge_whole(key, tensors, hp, scale, out)
        if finite and out.dtype in NARROW_DTYPES:  # these can overflow in the cast
            finite = bool(torch.isfinite(out.sum(dtype=torch.float32)))
        if not finite:  # a non-finite input (the fused kernels check them), or result
            culprit = _first_bad_input(key, self.sources)
            if culprit:
                raise BadTensorError(f"{culprit}: tensor '{key}' contains NaN or Inf values",
                                     tensor=key, model=culprit)
            if not bool(torch.isfinite(out).all()):
                raise BadTensorError(f"tensor '{key}': the merge produced NaN or Inf values "
                                     f"(overflow in {out.dtype}?)", tensor=key)
        return out

    def _merge_whole(self, key: str, tensors: list[torch.Tensor], hp: dict[str, Any],
                     scale: float, out: torch.Tensor) -> bool:
        x = self.inputs(key, tensors)
        if self.spec.statistics is not None and x.base is not None:
            # Computed over the task vectors (in place over the models: x owns them).
            view = statistics.WholeTensorView(x.deltas)
            x.stats = statistics.for_tensor(self.spec, hp, view, self.model_stats)
        elif self.model_stats:
            x.stats = dict(self.model_stats)
        merged = self.spec.fn(x, **hp)
        if self.spec.returns == "delta":
            merged = merged.mul_(scale) if scale != 1.0 else merged
            if self.add_base:
                merged = merged.add_(x.base)
        # One reduction finds any NaN or Inf (they poison the sum); only a non-finite sum,
        # which can also come from overflow of finite values, pays for an exact check.
        finite = bool(torch.isfinite(merged.sum()))
        out.copy_(merged)
        return finite or bool(torch.isfinite(merged).all())


def copy_model_files(src: Path, dst: Path, *, skip_weights_in: set[str] | None = None) -> None:
    """Copy everything but weights and the model card from a model folder (configs, tokenizer,
    scheduler, other pipeline components) into `dst`. Weights inside folders named in
    `skip_weights_in` ("" for the top level) are skipped; elsewhere they are copied."""
    skip = skip_weights_in if skip_weights_in is not None else {""}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or any(part.startswith(".") for part in rel.parts):
            continue
        parent = rel.parent.as_posix() if rel.parent != Path(".") else ""
        is_weight = path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt") or \
            path.name.endswith(".safetensors.index.json") or path.name.endswith(".bin.index.json")
        if (is_weight and parent in skip) or rel.as_posix() == "README.md":
            continue
        outside = leaves(src, path)
        if outside is not None:  # e.g. tokenizer.json -> ~/.cache/huggingface/token
            raise UnsafePathError(f"{src}: {rel.as_posix()} is a link to a file outside the "
                                  f"model folder ({outside}); it is not copied into a merge")
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
