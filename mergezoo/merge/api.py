"""Merge models by reference (local path or Hub repo ID) or from a recipe.

One entry shape: a recipe (what to merge: `MergeRecipe`) plus options (how to run it:
`MergeOptions`), resolved once into a `MergePlan` (method and checked hyperparameters, every
input validated, downloaded at the validated commit and opened) that the streaming engine
runs. `merge_models` is a convenience that builds the recipe from arguments.

Example:
    >>> from mergezoo.merge import merge_models, run_recipe, MergeOptions, MergeRecipe
    >>> merge_models("ties", ["org/a", "org/b"], base="org/base", out_dir="merged",   # doctest: +SKIP
    ...              params={"density": 0.2, "lambda": 1.0}, progress=False)
    >>> run_recipe(MergeRecipe.from_file("recipe.yaml"), out_dir="merged",          # doctest: +SKIP
    ...            options=MergeOptions(device="cpu", kernels="eager"))
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mergezoo import __version__
from mergezoo.errors import IncompatibleModelsError, RecipeError
from mergezoo.merge.engine import MergeResult, check_counts, copy_model_files, merge_sources
from mergezoo.merge.layers import LiNeS
from mergezoo.merge.provenance import (dtype_name, input_record, output_hashes, portable_ref,
                                       recipe_names, set_config_dtype, weight_hashes)
from mergezoo.merge.options import MergeOptions
from mergezoo.merge.recipe import MergeRecipe, ModelEntry, parse_dtype
from mergezoo.merge.registry import MergeMethod, get_method
from mergezoo.merge.sources import TensorSource, is_lora_folder, open_source
from mergezoo.merge.writer import atomic_output_dir
from mergezoo.zoo.manifest import ModelManifest
from mergezoo.zoo.refs import ModelRef
from mergezoo.zoo.resolve import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)

RECIPE_FILE = "mergezoo_recipe.yaml"
PROVENANCE_FILE = "mergezoo_merge.json"


def _config(path: Path) -> dict:
    cfg = path / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


def check_architectures(models: list[tuple[str, Path]]) -> None:
    """Refuse inputs whose config.json names different architectures or model types."""
    seen = [(label, _config(p)) for label, p in models]
    seen = [(label, c) for label, c in seen if c]
    if len(seen) < 2:
        return
    ref_label, ref = seen[0]
    problems = []
    for label, cfg in seen[1:]:
        for field in ("architectures", "model_type", "_class_name"):
            if field in ref and field in cfg and ref[field] != cfg[field]:
                problems.append(f"{label}: {field} is {cfg[field]!r}, {ref_label} has {ref[field]!r}")
    if problems:
        raise IncompatibleModelsError("the models have different architectures:\n  "
                                      + "\n  ".join(problems))


def _validate_before_download(refs: list[ModelRef], base: ModelRef | None,
                              component: str | None, allow_pickle: bool
                              ) -> tuple[list[ModelManifest], ModelManifest | None]:
    """Check every input's config and safetensors headers (Hub repos included) before any
    weight is downloaded, so an impossible merge fails at once; returns the manifests checked
    (the experts', and the base's or None). A Hub manifest is pinned to the commit it was read
    at, and that model's download is planned from it: the Hub is asked about a model once."""
    from mergezoo.zoo.validate import validate_models

    return validate_models(refs, base=base, component=component, allow_pickle=allow_pickle)


@dataclass
class MergePlan:
    """A recipe resolved once: its method with checked hyperparameters, and every input found
    (Hub repos downloaded at the commit they were validated at) and opened. `run_plan` runs it.

    `recipe` is the recipe as written beside the weights: experts found by tag are listed, and
    local inputs are named relative to `record_root` (no absolute, private path)."""

    recipe: MergeRecipe
    spec: MergeMethod
    hyperparameters: dict[str, Any]  # `MergeMethod.resolve`d: the method's keyword arguments
    dtype: torch.dtype
    out_dtype: torch.dtype | None
    lines: LiNeS | None
    base: ResolvedModel | None
    models: list[ResolvedModel]
    base_source: TensorSource | None
    sources: list[TensorSource]
    options: MergeOptions
    record_root: Path


def _weights_dir(r: ResolvedModel, component: str | None) -> Path:
    # A diffusers LoRA repo keeps every component's factors in one root file.
    if component and not (r.path / component).is_dir() and is_lora_folder(r.path):
        return r.path
    return r.path / component if component else r.path


def _parse_ref(text: str, field: str) -> ModelRef:
    if not str(text).strip():
        raise RecipeError(f"{field}: an empty model reference")
    return ModelRef.parse(text)


def plan_merge(recipe: MergeRecipe, options: MergeOptions | None = None, *,
               relative_to: str | Path) -> MergePlan:
    """Resolve `recipe` once: find experts by tag, check the method and its hyperparameters
    (before any network access), validate every input from its metadata (before any weight is
    downloaded), then download Hub inputs at the validated commits and open every input.
    Local inputs are recorded relative to `relative_to` (usually the output folder).

    Example:
        >>> plan = plan_merge(MergeRecipe.from_file("recipe.yaml"), relative_to="merged")  # doctest: +SKIP
        >>> run_plan(plan, "merged")                                                          # doctest: +SKIP
    """
    options = options or MergeOptions()
    recipe = expand_experts(recipe)
    spec = get_method(recipe.merge_method)
    dtype = parse_dtype(recipe.dtype, "dtype") or torch.float32
    out_dtype = parse_dtype(recipe.out_dtype, "out_dtype")
    lines = LiNeS(recipe.lines.alpha, recipe.lines.beta) if recipe.lines else None
    entries = list(recipe.models)
    if recipe.base_model is not None and spec.needs.base:
        # mergekit recipes often list the base among the models; its task vector is zero and
        # mergekit leaves it out, so do the same.
        entries = [m for m in entries if m.model != recipe.base_model]
    # Check the method and its hyperparameters before touching any model (or the network).
    check_counts(spec, len(entries), recipe.base_model is not None)
    hyperparameters = spec.resolve(recipe.parameters, [m.parameters for m in entries],
                                   len(entries))
    refs = [_parse_ref(m.model, f"models[{i}]") for i, m in enumerate(entries)]
    base_ref = (_parse_ref(recipe.base_model, "base_model")
                if recipe.base_model is not None else None)
    manifests, base_manifest = _validate_before_download(refs, base_ref, recipe.component,
                                                         options.allow_pickle)

    def resolve(ref: ModelRef, manifest: ModelManifest | None) -> ResolvedModel:
        pinned = manifest if manifest is not None and manifest.repo_id else None
        return resolve_model(ref, allow_pickle=options.allow_pickle, manifest=pinned)

    base = resolve(base_ref, base_manifest) if base_ref is not None else None
    models = [resolve(r, m) for r, m in zip(refs, manifests)]
    component = recipe.component
    if component:
        for r in ([base] if base else []) + models:
            if not _weights_dir(r, component).is_dir():
                raise RecipeError(f"{r.ref}: has no component folder '{component}'")
    base_source = (open_source(_weights_dir(base, component), f"base '{base.ref}'",
                               allow_pickle=options.allow_pickle) if base else None)
    sources = [open_source(_weights_dir(r, component), f"expert '{r.ref}'",
                           allow_pickle=options.allow_pickle, base_source=base_source,
                           component=component) for r in models]
    check_architectures([(s.label, _weights_dir(r, component)) for s, r in zip(sources, models)]
                        + ([(base_source.label, _weights_dir(base, component))]
                           if base_source else []))
    record_root = Path(relative_to).expanduser()
    written = _portable_recipe(recipe, ([base] if base else []) + models, record_root)
    return MergePlan(recipe=written, spec=spec, hyperparameters=hyperparameters, dtype=dtype,
                     out_dtype=out_dtype, lines=lines, base=base, models=models,
                     base_source=base_source, sources=sources, options=options,
                     record_root=record_root)


def run_plan(plan: MergePlan, out_dir: str | Path, *,
             finalize: Callable[[Path], None] | None = None,
             output_delta: bool = False) -> MergeResult:
    """Run a merge plan into `out_dir`, atomically: the merged weights, the config and
    tokenizer of the base (or the first model), the recipe and the provenance. `finalize(folder)`
    is called once every file is written, before the folder is moved into place (e.g. to write
    the model card). With `output_delta`, a task-vector method writes its merged task vector."""
    started = time.perf_counter()
    recipe, component = plan.recipe, plan.recipe.component
    template = plan.base or plan.models[0]

    def subfolder(r: ResolvedModel) -> str | None:
        return component if component and (r.path / component).is_dir() else None

    def prepare(tmp: Path) -> None:
        copy_model_files(template.path, tmp, skip_weights_in={component or ""})
        set_config_dtype(tmp / component if component else tmp, plan.out_dtype)
        (tmp / RECIPE_FILE).write_text(recipe.to_yaml())

    def finalize_output(tmp: Path, result: MergeResult) -> None:
        names = {hp.name: hp.arg for hp in plan.spec.hyperparameters.values()}
        lines = plan.lines
        provenance = {
            "mergezoo": __version__, "method": result.method, "recipe": RECIPE_FILE,
            "hyperparameters": _jsonable(recipe_names(result.hyperparameters, names)),
            "seed": recipe.seed, "output": "full", "out_dir": Path(out_dir).name,
            "dtype": dtype_name(plan.dtype),
            "out_dtype": dtype_name(plan.out_dtype) if plan.out_dtype else None,
            "lines": {"alpha": lines.alpha, "beta": lines.beta} if lines else None,
            "base_model": (input_record(plan.base, plan.record_root, subfolder(plan.base))
                           if plan.base else None),
            "models": [input_record(r, plan.record_root, subfolder(r)) for r in plan.models],
            "component": component, "device": result.device,
            "environment": {"torch": torch.__version__, "python": platform.python_version()},
            "merge_seconds": round(time.perf_counter() - started, 3),
            "output_sha256": result.sha256,
            "files_sha256": output_hashes(tmp, skip=set(result.sha256)),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if finalize is not None:
            finalize(tmp)

    result = merge_sources(plan.spec, plan.sources, base=plan.base_source, out_dir=out_dir,
                           hyperparameters=plan.hyperparameters, lines=plan.lines,
                           dtype=plan.dtype, out_dtype=plan.out_dtype, seed=recipe.seed,
                           options=plan.options, weights_subdir=component,
                           prepare_output=prepare, finalize_output=finalize_output,
                           output_delta=output_delta)
    result.base_path = plan.base.path if plan.base else None
    return result


def recipe_of(method: str, models: list[str | Path], *, base: str | Path | None = None,
              params: dict[str, Any] | None = None,
              model_params: list[dict[str, Any]] | None = None,
              dtype: torch.dtype = torch.float32, out_dtype: torch.dtype | None = None,
              lines: LiNeS | None = None, component: str | None = None,
              seed: int = 0) -> MergeRecipe:
    """The recipe that `merge_models` runs for these arguments, checked as a recipe file is.
    `model_params[i]` goes with `models[i]`.

    Example:
        >>> recipe_of("ties", ["a", "b"], base="base", params={"density": 0.5}).base_model
        'base'
    """
    model_params = list(model_params or [])
    if len(model_params) > len(models):
        raise RecipeError(f"merge_models: {len(model_params)} model_params for "
                          f"{len(models)} models")
    model_params += [{}] * (len(models) - len(model_params))
    data: dict[str, Any] = {
        "merge_method": method,
        "models": [{"model": str(m), "parameters": p} for m, p in zip(models, model_params)],
        "parameters": params or {}, "dtype": dtype_name(dtype), "seed": seed}
    optional = {"base_model": str(base) if base is not None else None,
                "out_dtype": dtype_name(out_dtype) if out_dtype else None,
                "component": component,
                "lines": {"alpha": lines.alpha, "beta": lines.beta} if lines else None}
    data.update({k: v for k, v in optional.items() if v is not None})
    return MergeRecipe.from_dict(data, "merge_models")


def merge_models(method: str, models: list[str | Path], *, out_dir: str | Path,
                 base: str | Path | None = None, params: dict[str, Any] | None = None,
                 model_params: list[dict[str, Any]] | None = None,
                 dtype: torch.dtype = torch.float32, out_dtype: torch.dtype | None = None,
                 lines: LiNeS | None = None, component: str | None = None, seed: int = 0,
                 options: MergeOptions | None = None,
                 finalize: Callable[[Path], None] | None = None,
                 relative_to: str | Path | None = None, **option_fields: Any) -> MergeResult:
    """Merge models given by reference into `out_dir` (config and tokenizer from the base, or
    the first model, so `from_pretrained(out_dir)` loads the result): a convenience that builds
    the recipe (`recipe_of`) and runs it (`run_recipe`).

    `options` (see `MergeOptions`) may also be given as keywords: `device="cpu",
    progress=False, overwrite=True, kernels="eager", max_shard_size="1GB", allow_pickle=True`.
    """
    recipe = recipe_of(method, models, base=base, params=params, model_params=model_params,
                       dtype=dtype, out_dtype=out_dtype, lines=lines, component=component,
                       seed=seed)
    return run_recipe(recipe, out_dir=out_dir, options=MergeOptions.of(options, **option_fields),
                      finalize=finalize, relative_to=relative_to)


def _portable_recipe(recipe: MergeRecipe, inputs: list[ResolvedModel],
                     relative_to: Path) -> MergeRecipe:
    """The recipe with every local input named by its path relative to the output, so the
    copy written beside the weights (and pushed with them) holds no absolute local path."""
    names = {str(r.ref): portable_ref(r, relative_to) for r in inputs}
    names.update({str(r.path): portable_ref(r, relative_to) for r in inputs if not r.repo_id})
    base = names.get(recipe.base_model, recipe.base_model) if recipe.base_model else None
    models = [m.model_copy(update={"model": names.get(m.model, m.model)}) for m in recipe.models]
    return recipe.model_copy(update={"base_model": base, "models": models})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def expand_experts(recipe: MergeRecipe) -> MergeRecipe:
    """Resolve `experts: {tag: ...}` to repo IDs and return a recipe that lists them."""
    if recipe.experts is None:
        return recipe
    try:
        from mergezoo.zoo.search import find_experts
    except ImportError as err:
        raise RecipeError("experts by tag need the zoo search module") from err
    q = recipe.experts
    found = find_experts(tag=q.tag, base=q.base, zoo=q.zoo)
    if q.limit:
        found = found[: q.limit]
    if not found:
        raise RecipeError(f"experts: no model found with tag {q.tag!r}"
                          + (f" and base {q.base!r}" if q.base else ""))
    known = {m.model for m in recipe.models}
    extra = [ModelEntry(model=f) for f in found if f not in known]
    return recipe.model_copy(update={"models": recipe.models + extra, "experts": None})


def run_recipe(recipe: MergeRecipe, *, out_dir: str | Path, options: MergeOptions | None = None,
               finalize: Callable[[Path], None] | None = None,
               relative_to: str | Path | None = None, **option_fields: Any) -> MergeResult:
    """Run a merge recipe (see `mergezoo.merge.recipe`) with `options` (see `MergeOptions`;
    its fields may also be given as keywords): the entry point every merge goes through.

    `finalize(folder)` runs once every file is written, before the output is moved into place
    (the CLI writes the model card there); `relative_to` is the folder local inputs are recorded
    relative to (default: `out_dir`).
    """
    options = MergeOptions.of(options, **option_fields)
    if recipe.output == "lora":
        return _merge_to_lora(recipe, out_dir=out_dir, options=options, finalize=finalize)
    plan = plan_merge(recipe, options,
                      relative_to=relative_to if relative_to is not None else out_dir)
    return run_plan(plan, out_dir, finalize=finalize)


def _merge_to_lora(recipe: MergeRecipe, *, out_dir: str | Path, options: MergeOptions,
                   finalize: Callable[[Path], None] | None = None) -> MergeResult:
    """Merge in a temporary folder, then re-factorise the merged task vector into a LoRA of
    `recipe.rank` by truncated SVD (errors per layer in lora_errors.json).

    A task-vector method writes its merged task vector itself, in float32, from exact task
    vectors (a LoRA expert's B @ A * scaling): a rank-r merge re-factorises at rank r to
    float32 precision. Other methods write the merged model in float32, and merged - base is
    factorised. The factors are float32 unless the recipe's out_dtype says otherwise."""
    import shutil

    from mergezoo.merge.atomic import owned_temp_dir
    from mergezoo.merge.lora_extract import ZeroSource, extract_lora

    full = recipe.model_copy(update={"output": "full", "rank": None, "out_dtype": "float32"})
    out = Path(out_dir).expanduser().absolute()
    with atomic_output_dir(out, overwrite=options.overwrite) as tmp:
        scratch = owned_temp_dir(out.parent, out.name, "full")  # removed after a SIGKILL too
        try:
            # Local inputs are recorded relative to the LoRA's folder, not the scratch merge's.
            plan = plan_merge(full, MergeOptions.of(options, overwrite=False), relative_to=out)
            as_delta = plan.spec.returns == "delta" and plan.base is not None
            result = run_plan(plan, scratch / "merged", output_delta=as_delta)
            merged = scratch / "merged"
            provenance = json.loads((merged / PROVENANCE_FILE).read_text())
            # The plan already resolved (and for Hub repos pulled) the base: reuse its path.
            base = result.base_path
            if recipe.component:
                base, merged = base / recipe.component, merged / recipe.component
            # The adapter names a Hub base by its ID; a local base by nothing: an absolute path
            # is private, and a relative one would change with where the output lies, so a
            # re-run elsewhere (`mergezoo reproduce`) would not give the same file.
            hub_base = provenance["base_model"].get("repo_id")
            reference = ZeroSource(open_source(base, "base model")) if as_delta else base
            report = extract_lora(merged, reference, tmp / "adapter", recipe.rank,
                                  base_model_name=plan.recipe.base_model if hub_base else None,
                                  out_dtype=parse_dtype(recipe.out_dtype, "out_dtype")
                                  or torch.float32)
            for f in (tmp / "adapter").iterdir():
                f.rename(tmp / f.name)
            (tmp / "adapter").rmdir()
            # "out_dir" relative to the report itself: an absolute path would leak where the
            # merge ran, and the adapter's own temporary folder is meaningless.
            report.out_dir = Path(".")
            (tmp / "lora_errors.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            written = plan.recipe.model_copy(update={"output": "lora", "rank": recipe.rank,
                                                     "out_dtype": recipe.out_dtype})
            (tmp / RECIPE_FILE).write_text(written.to_yaml())
            weights = weight_hashes(tmp)
            provenance.update({"output": "lora", "rank": recipe.rank, "out_dir": out.name,
                               "output_sha256": weights,
                               "files_sha256": output_hashes(tmp, skip=set(weights))})
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
            if finalize is not None:
                finalize(tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    result.out_dir = out
    result.files = sorted(p.name for p in out.iterdir())
    result.lora_errors = report.errors
    return result
