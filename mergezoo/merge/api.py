"""Merge models by reference (local path or Hub repo ID) or from a recipe.

Example:
    >>> from mergezoo.merge import merge_models, run_recipe, MergeRecipe
    >>> merge_models("ties", ["org/a", "org/b"], base="org/base", out_dir="merged",   # doctest: +SKIP
    ...              params={"density": 0.2, "lambda": 1.0})
    >>> run_recipe(MergeRecipe.from_file("recipe.yaml"), out_dir="merged")          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mergezoo import __version__
from mergezoo.errors import IncompatibleModelsError, RecipeError
from mergezoo.merge.engine import MergeResult, check_counts, copy_model_files, merge_sources
from mergezoo.merge.layers import LiNeS
from mergezoo.merge.provenance import (dtype_name, input_record, output_hashes, portable_ref,
                                       recipe_names, set_config_dtype, weight_hashes)
from mergezoo.merge.recipe import MergeRecipe, ModelEntry, parse_dtype
from mergezoo.merge.registry import get_method
from mergezoo.merge.sources import is_lora_folder, open_source
from mergezoo.merge.writer import atomic_output_dir
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


def _validate_before_download(refs: list[str], base: str | None, component: str | None,
                              allow_pickle: bool) -> dict[str, str]:
    """Check every input's config and safetensors headers (Hub repos included) before any
    weight is downloaded, so an impossible merge fails at once; returns the commit SHA each
    Hub model was validated at, which its download is pinned to."""
    from mergezoo.zoo.validate import validate_experts

    return validate_experts(refs, base=base, component=component, allow_pickle=allow_pickle)


def merge_models(method: str, models: list[str | Path], *, out_dir: str | Path,
                 base: str | Path | None = None, params: dict[str, Any] | None = None,
                 model_params: list[dict[str, Any]] | None = None, device: str = "auto",
                 dtype: torch.dtype = torch.float32, out_dtype: torch.dtype | None = None,
                 lines: LiNeS | None = None, component: str | None = None, seed: int = 0,
                 overwrite: bool = False, progress: bool = True, allow_pickle: bool = False,
                 max_shard_size: str | int = "2GB",
                 recipe: MergeRecipe | None = None,
                 finalize: Callable[[Path], None] | None = None,
                 relative_to: str | Path | None = None,
                 output_delta: bool = False) -> MergeResult:
    """Merge models given by reference into `out_dir` (config and tokenizer from the base,
    or the first model, so `from_pretrained(out_dir)` loads the result).

    The recipe and provenance written beside the weights name local inputs by their path
    relative to `relative_to` (default: `out_dir`). `finalize(folder)` is called once every
    file is written, before the folder is moved into place (e.g. to write the model card).
    """
    started = time.perf_counter()
    refs = [str(m) for m in models]
    spec = get_method(method)
    if base is not None and spec.needs.base and str(base) in refs:
        # mergekit recipes often list the base among the models; its task vector is zero and
        # mergekit leaves it out, so do the same.
        keep = [i for i, r in enumerate(refs) if r != str(base)]
        refs = [refs[i] for i in keep]
        if model_params:
            model_params = [model_params[i] for i in keep if i < len(model_params)]
    # Check the method and its hyperparameters before touching any model (or the network).
    check_counts(spec, len(refs), base is not None)
    spec.resolve(params or {}, model_params or [], len(refs))
    pins = _validate_before_download(refs, str(base) if base is not None else None, component,
                                     allow_pickle)
    resolved_base = (resolve_model(base, allow_pickle=allow_pickle, pin=pins.get(str(base)))
                     if base is not None else None)
    resolved = [resolve_model(r, allow_pickle=allow_pickle, pin=pins.get(r)) for r in refs]

    def weights_dir(r: ResolvedModel) -> Path:
        # A diffusers LoRA repo keeps every component's factors in one root file.
        if component and not (r.path / component).is_dir() and is_lora_folder(r.path):
            return r.path
        return r.path / component if component else r.path

    if component:
        for r in ([resolved_base] if resolved_base else []) + resolved:
            if not weights_dir(r).is_dir():
                raise RecipeError(f"{r.ref}: has no component folder '{component}'")
    base_src = (open_source(weights_dir(resolved_base), f"base '{resolved_base.ref}'",
                            allow_pickle=allow_pickle) if resolved_base else None)
    sources = [open_source(weights_dir(r), f"expert '{r.ref}'", allow_pickle=allow_pickle,
                           base_source=base_src, component=component) for r in resolved]
    check_architectures([(s.label, weights_dir(r)) for s, r in zip(sources, resolved)]
                        + ([(base_src.label, weights_dir(resolved_base))] if base_src else []))
    template = resolved_base or resolved[0]
    record_root = Path(relative_to if relative_to is not None else out_dir).expanduser()

    if recipe is None:
        recipe = MergeRecipe(merge_method=method, base_model=str(base) if base is not None else None,
                             models=[ModelEntry(model=r, parameters=p) for r, p in
                                     zip(refs, (model_params or [{}] * len(refs)))],
                             parameters=params or {}, dtype=str(dtype).removeprefix("torch."),
                             out_dtype=str(out_dtype).removeprefix("torch.") if out_dtype else None,
                             component=component, seed=seed,
                             lines={"alpha": lines.alpha, "beta": lines.beta} if lines else None)

    recipe = _portable_recipe(recipe, ([resolved_base] if resolved_base else []) + resolved,
                              record_root)

    def subfolder(r: ResolvedModel) -> str | None:
        return component if component and (r.path / component).is_dir() else None

    def prepare(tmp: Path) -> None:
        copy_model_files(template.path, tmp, skip_weights_in={component or ""})
        set_config_dtype(tmp / component if component else tmp, out_dtype)
        (tmp / RECIPE_FILE).write_text(recipe.to_yaml())

    def finalize_output(tmp: Path, result: MergeResult) -> None:
        names = {hp.name: hp.arg for hp in spec.hyperparameters.values()}
        provenance = {
            "mergezoo": __version__, "method": result.method, "recipe": RECIPE_FILE,
            "hyperparameters": _jsonable(recipe_names(result.hyperparameters, names)),
            "seed": seed, "output": "full", "out_dir": Path(out_dir).name,
            "dtype": dtype_name(dtype), "out_dtype": dtype_name(out_dtype) if out_dtype else None,
            "lines": {"alpha": lines.alpha, "beta": lines.beta} if lines else None,
            "base_model": (input_record(resolved_base, record_root, subfolder(resolved_base))
                           if resolved_base else None),
            "models": [input_record(r, record_root, subfolder(r)) for r in resolved],
            "component": component, "device": result.device,
            "environment": {"torch": torch.__version__, "python": platform.python_version()},
            "merge_seconds": round(time.perf_counter() - started, 3),
            "output_sha256": result.sha256,
            "files_sha256": output_hashes(tmp, skip=set(result.sha256)),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if finalize is not None:
            finalize(tmp)

    result = merge_sources(method, sources, base=base_src, out_dir=out_dir, params=params,
                           model_params=model_params, lines=lines, device=device, dtype=dtype,
                           out_dtype=out_dtype, seed=seed, overwrite=overwrite,
                           progress=progress, max_shard_size=max_shard_size,
                           weights_subdir=component, prepare_output=prepare,
                           finalize_output=finalize_output,
                           output_delta=output_delta)
    result.base_path = resolved_base.path if resolved_base else None
    return result


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


def run_recipe(recipe: MergeRecipe, *, out_dir: str | Path, device: str = "auto",
               overwrite: bool = False, progress: bool = True, allow_pickle: bool = False,
               max_shard_size: str | int = "2GB", finalize: Callable[[Path], None] | None = None,
               relative_to: str | Path | None = None) -> MergeResult:
    """Run a merge recipe (see `mergezoo.merge.recipe`).

    `finalize(folder)` runs once every file is written, before the output is moved into place
    (the CLI writes the model card there); `relative_to` is the folder local inputs are recorded
    relative to (default: `out_dir`).
    """
    recipe = expand_experts(recipe)
    if recipe.output == "lora":
        return _merge_to_lora(recipe, out_dir=out_dir, device=device, overwrite=overwrite,
                              progress=progress, allow_pickle=allow_pickle, finalize=finalize)
    return _run_full(recipe, out_dir=out_dir, device=device, overwrite=overwrite,
                     progress=progress, allow_pickle=allow_pickle, max_shard_size=max_shard_size,
                     finalize=finalize, relative_to=relative_to)


def _run_full(recipe: MergeRecipe, *, out_dir: str | Path, device: str, overwrite: bool,
              progress: bool, allow_pickle: bool, max_shard_size: str | int = "2GB",
              output_delta: bool = False, finalize: Callable[[Path], None] | None = None,
              relative_to: str | Path | None = None) -> MergeResult:
    lines = LiNeS(recipe.lines.alpha, recipe.lines.beta) if recipe.lines else None
    return merge_models(
        recipe.merge_method, [m.model for m in recipe.models], out_dir=out_dir,
        base=recipe.base_model, params=recipe.parameters,
        model_params=[m.parameters for m in recipe.models], device=device,
        dtype=parse_dtype(recipe.dtype, "dtype"), out_dtype=parse_dtype(recipe.out_dtype, "out_dtype"),
        lines=lines, component=recipe.component, seed=recipe.seed, overwrite=overwrite,
        progress=progress, allow_pickle=allow_pickle, max_shard_size=max_shard_size, recipe=recipe,
        finalize=finalize, relative_to=relative_to, output_delta=output_delta)


def _merge_to_lora(recipe: MergeRecipe, *, out_dir: str | Path, device: str, overwrite: bool,
                   progress: bool, allow_pickle: bool,
                   finalize: Callable[[Path], None] | None = None) -> MergeResult:
    """Merge in a temporary folder, then re-factorise the merged task vector into a LoRA of
    `recipe.rank` by truncated SVD (errors per layer in lora_errors.json).

    A task-vector method writes its merged task vector itself, in float32, from exact task
    vectors (a LoRA expert's B @ A * scaling): a rank-r merge re-factorises at rank r to
    float32 precision. Other methods write the merged model in float32, and merged - base is
    factorised. The factors are float32 unless the recipe's out_dtype says otherwise."""
    import shutil

    from mergezoo.merge.atomic import owned_temp_dir
    from mergezoo.merge.lora import ZeroSource, extract_lora

    as_delta = get_method(recipe.merge_method).returns == "delta" and recipe.base_model is not None
    full = recipe.model_copy(update={"output": "full", "rank": None, "out_dtype": "float32"})
    out = Path(out_dir).expanduser().absolute()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        scratch = owned_temp_dir(out.parent, out.name, "full")  # removed after a SIGKILL too
        try:
            # Local inputs are recorded relative to the LoRA's folder, not the scratch merge's.
            result = _run_full(full, out_dir=scratch / "merged", device=device,
                               overwrite=False, progress=progress, allow_pickle=allow_pickle,
                               output_delta=as_delta, relative_to=out)
            merged = scratch / "merged"
            provenance = json.loads((merged / PROVENANCE_FILE).read_text())
            written = MergeRecipe.from_yaml((merged / RECIPE_FILE).read_text())
            # The merge already resolved (and for Hub repos pulled) the base: reuse its path.
            base = result.base_path
            if recipe.component:
                base, merged = base / recipe.component, merged / recipe.component
            # The adapter names a Hub base by its ID; a local base by nothing: an absolute path
            # is private, and a relative one would change with where the output lies, so a
            # re-run elsewhere (`mergezoo reproduce`) would not give the same file.
            hub_base = provenance["base_model"].get("repo_id")
            reference = ZeroSource(open_source(base, "base model")) if as_delta else base
            report = extract_lora(merged, reference, tmp / "adapter", recipe.rank,
                                  base_model_name=written.base_model if hub_base else None,
                                  out_dtype=parse_dtype(recipe.out_dtype, "out_dtype")
                                  or torch.float32)
            for f in (tmp / "adapter").iterdir():
                f.rename(tmp / f.name)
            (tmp / "adapter").rmdir()
            # "out_dir" relative to the report itself: an absolute path would leak where the
            # merge ran, and the adapter's own temporary folder is meaningless.
            report.out_dir = Path(".")
            (tmp / "lora_errors.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            written = written.model_copy(update={"output": "lora", "rank": recipe.rank,
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
