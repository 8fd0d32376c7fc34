"""The model card of a merged model, from what the merge recorded (and results, when there are).

`render_card(model_dir)` reads the provenance (`mergezoo_merge.json`) and the recipe
(`mergezoo_recipe.yaml`) of a merged folder, optionally a benchmark's results (a dict or a
results.json path), and returns a `huggingface_hub.ModelCard` rendered from the Jinja template
in `templates/merged_model.md.j2`. `write_card` writes it to `model_dir/README.md` atomically,
with a copy of results.json and the plots beside it, so one push carries them all.

Example:
    >>> card = render_card("merged")                                   # doctest: +SKIP
    >>> card.data.base_model, card.data.tags                           # doctest: +SKIP
    (['org/base', 'org/a', 'org/b'], ['merge', 'mergezoo', 'ties'])
    >>> write_card("merged", results="bench/results.json")             # doctest: +SKIP
    PosixPath('merged/README.md')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import ModelCard, ModelCardData

from mergezoo import __version__
from mergezoo.errors import ModelCardError, UnknownMethodError
from mergezoo.merge.api import PROVENANCE_FILE, RECIPE_FILE
from mergezoo.merge.registry import get_method
from mergezoo.model_cards.results import (baseline_rows, eval_results, load_results,
                                          method_rows, pick_row)

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "merged_model.md.j2"
LINES_PAPER = "https://arxiv.org/abs/2410.17146"
# What a transformers architecture's name says about its task (the card's pipeline_tag when no
# input card names one).
_PIPELINE_BY_SUFFIX = {"ForCausalLM": "text-generation", "ForMaskedLM": "fill-mask",
                       "ForSequenceClassification": "text-classification",
                       "ForTokenClassification": "token-classification",
                       "ForQuestionAnswering": "question-answering",
                       "ForImageClassification": "image-classification",
                       "ForConditionalGeneration": "text2text-generation"}


def read_merge(model_dir: str | Path) -> tuple[dict, str | None]:
    """(provenance, recipe text or None) of a merged folder; ModelCardError if it is not one."""
    folder = Path(model_dir).expanduser()
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        raise ModelCardError(f"{folder}: no {PROVENANCE_FILE}; only a folder written by "
                             "`mergezoo merge` can get a mergezoo card")
    try:
        provenance = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelCardError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(provenance, dict) or "method" not in provenance:
        raise ModelCardError(f"{path}: not a mergezoo provenance file (no `method`)")
    recipe = folder / RECIPE_FILE
    return provenance, recipe.read_text() if recipe.is_file() else None


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _inputs(provenance: dict) -> list[tuple[str, dict]]:
    """(role, record) of every input, the base first."""
    out = [("base", provenance["base_model"])] if provenance.get("base_model") else []
    return out + [(f"expert {i + 1}", m) for i, m in enumerate(provenance.get("models") or [])]


def _library(folder: Path, provenance: dict) -> str:
    if provenance.get("output") == "lora":
        return "peft"
    if provenance.get("component") or (folder / "model_index.json").is_file() \
            or "_class_name" in _json(folder / "config.json"):
        return "diffusers"
    return "transformers"


def _pipeline_tag(folder: Path, provenance: dict, library: str) -> str | None:
    for _, record in _inputs(provenance):
        tag = (record.get("card") or {}).get("pipeline_tag")
        if tag:
            return str(tag)
    if library == "transformers":
        for arch in _json(folder / "config.json").get("architectures") or []:
            for suffix, tag in _PIPELINE_BY_SUFFIX.items():
                if str(arch).endswith(suffix):
                    return tag
    return None


def _license(provenance: dict) -> tuple[str | None, list[str]]:
    """The license every input shares, and warnings when they differ or are unknown."""
    found = {}
    for role, record in _inputs(provenance):
        found[f"{role} ({_display_name(record)})"] = (record.get("card") or {}).get("license")
    known = {v for v in found.values() if v}
    unknown = [k for k, v in found.items() if not v]
    warnings = []
    if len(known) > 1:
        listed = "; ".join(f"{k}: {v}" for k, v in found.items() if v)
        warnings.append(f"the inputs have different licenses ({listed}); check that they allow "
                        "this merge and its use before relying on it. The card says `other`.")
        return "other", warnings
    if unknown:
        warnings.append(f"the license of {', '.join(unknown)} is unknown (no license in its card); "
                        "check it before using or redistributing this merge.")
    if known and not unknown:
        return known.pop(), warnings
    return None, warnings


def _datasets(provenance: dict) -> list[str]:
    out: list[str] = []
    for _, record in _inputs(provenance):
        value = (record.get("card") or {}).get("datasets") or []
        for d in [value] if isinstance(value, str) else value:
            if isinstance(d, str) and d not in out:
                out.append(d)
    return out


def _display_name(record: dict) -> str:
    if record.get("repo_id"):
        return record["repo_id"]
    return f"local folder {record.get('path') or record.get('ref') or '?'}"


def _cell(value: Any) -> str:
    """A value for a Markdown table cell ('|' would end the cell)."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _score(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, (int, float)):
        return "-"
    ci = row.get(f"{key}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


def _usage(folder: Path, provenance: dict, library: str, ref: str) -> str:
    config = _json(folder / "config.json")
    if library == "peft":
        base = provenance.get("base_model") or {}
        base_ref = base.get("repo_id") or "path/to/the/base"
        return ("from peft import PeftModel\nfrom transformers import AutoModel\n\n"
                f"base = AutoModel.from_pretrained({base_ref!r})  # or the base's own Auto class\n"
                f"model = PeftModel.from_pretrained(base, {ref!r})")
    if library == "diffusers":
        component = provenance.get("component")
        lines = []
        if (folder / "model_index.json").is_file():
            lines += ["from diffusers import DiffusionPipeline", "",
                      f"pipe = DiffusionPipeline.from_pretrained({ref!r})"]
        if component:
            cls = _json(folder / component / "config.json").get("_class_name") or "AutoModel"
            lines += [f"from diffusers import {cls}", "",
                      f"{component} = {cls}.from_pretrained({ref!r}, subfolder={component!r})"]
        elif not lines:
            cls = config.get("_class_name") or "AutoModel"
            lines += [f"from diffusers import {cls}", "", f"model = {cls}.from_pretrained({ref!r})"]
        return "\n".join(lines)
    cls = (config.get("architectures") or ["AutoModel"])[0]
    lines = [f"from transformers import {cls}", "",
             f"model = {cls}.from_pretrained({ref!r}, dtype=\"auto\")"]
    if any((folder / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
        lines[0] = f"from transformers import AutoTokenizer, {cls}"
        lines.append(f"tokenizer = AutoTokenizer.from_pretrained({ref!r})")
    return "\n".join(lines)


def _plots(results: dict | None, results_dir: Path | None,
           folder: Path) -> list[tuple[Path | None, str]]:
    """(source to copy or None, path in the model folder) of every plot that exists."""
    out = []
    for plot in (results or {}).get("plots") or []:
        rel = Path(str(plot))
        if rel.is_absolute() or ".." in rel.parts:
            src = rel if rel.is_absolute() else (results_dir or folder) / rel
            if src.is_file():
                out.append((src, f"plots/{rel.name}"))
            continue
        if (folder / rel).is_file():
            out.append((None, rel.as_posix()))
        elif results_dir is not None and (results_dir / rel).is_file():
            out.append((results_dir / rel, f"plots/{rel.name}" if rel.parts[0] != "plots"
                        else rel.as_posix()))
    return out


def _hp_source(row: dict | None) -> str:
    tuning = ((row or {}).get("cost") or {}).get("tuning_evals")
    if isinstance(tuning, (int, float)) and tuning > 0:
        return (f"tuned on held-in validation data by `mergezoo bench` ({int(tuning)} "
                "evaluations; held-out data was not looked at)")
    return "given in the recipe; unset ones at the method's defaults"


def render_card(model_dir: str | Path, results: dict | str | Path | None = None, *,
                repo_id: str | None = None) -> ModelCard:
    """The card of the merged model in `model_dir` (see the module docstring). `repo_id`: the
    Hub repo it is (or will be) pushed to, used in the usage and reproduce snippets."""
    folder = Path(model_dir).expanduser()
    provenance, recipe = read_merge(folder)
    data, results_dir = load_results(results)
    method = str(provenance["method"])
    try:
        spec = get_method(method)
        paper, needs, data_need = spec.paper, spec.needs.describe(), spec.needs.data
    except UnknownMethodError:
        paper, needs, data_need = None, {}, None
    hyperparameters = provenance.get("hyperparameters") or {}
    inputs = _inputs(provenance)
    experts = provenance.get("models") or []
    name = repo_id.split("/")[-1] if repo_id else str(provenance.get("out_dir") or folder.name)
    ref = repo_id or f"./{provenance.get('out_dir') or folder.name}"
    library = _library(folder, provenance)
    pipeline_tag = _pipeline_tag(folder, provenance, library)
    license_, warnings = _license(provenance)
    benchmark = (data or {}).get("benchmark")
    row = pick_row(data, method, n_models=len(experts), hyperparameters=hyperparameters)
    tags = ["merge", "mergezoo", method]
    if provenance.get("lines"):
        tags.append("lines")
    if library == "peft":
        tags.append("lora")
    if benchmark:
        tags.append(str(benchmark))
    base_models = [r["repo_id"] for _, r in inputs if r.get("repo_id")]
    card_data = ModelCardData(
        base_model=list(dict.fromkeys(base_models)) or None,
        base_model_relation="merge" if base_models else None,
        library_name=library, pipeline_tag=pipeline_tag, license=license_,
        datasets=_datasets(provenance) or None, tags=list(dict.fromkeys(tags)),
        model_name=name, eval_results=eval_results(data, row, name, task_type=pipeline_tag) or None)
    if not base_models:
        warnings.append("every input is a local folder, so the card names no Hub base model; "
                        "the inputs table gives their sha256.")

    method_line = f"`{method}`" + (f" ([paper]({paper}))" if paper else "")
    if provenance.get("lines"):
        lines = provenance["lines"]
        method_line += (f", with LiNeS layer scaling alpha={lines['alpha']}, "
                        f"beta={lines['beta']} ([paper]({LINES_PAPER}))")
    input_names = ", ".join(_display_name(r) for r in experts) or "no expert"
    base = provenance.get("base_model")
    summary = (f"This model is a merge of {len(experts)} model(s) ({input_names})"
               + (f" fine-tuned from {_display_name(base)}" if base else "")
               + f", made with [mergezoo](https://pypi.org/project/mergezoo/) "
               f"{provenance.get('mergezoo', '')} using the `{method}` method"
               + (f" ([paper]({paper}))" if paper else "") + ". "
               + ("Its hyperparameters were tuned on held-in validation data by `mergezoo "
                  "bench`. " if "tuned" in _hp_source(row) else
                  "Its hyperparameters are the ones its recipe gives. ")
               + "Every input is pinned (Hub commit SHA, or sha256 of each weight file), so "
               "`mergezoo reproduce` can rebuild it and check every output file.")

    input_rows = []
    for role, record in inputs:
        model = (f"[{record['repo_id']}](https://huggingface.co/{record['repo_id']})"
                 if record.get("repo_id") else f"local: `{record.get('path') or record.get('ref')}`")
        revision = f"`{record['revision']}`" if record.get("revision") else "local (by hash)"
        hashes = record.get("sha256") or {"-": "not recorded"}
        for file, digest in hashes.items():
            input_rows.append({"role": role, "model": model, "revision": revision,
                               "file": _cell(file), "sha256": digest})
    output_files = sorted({**(provenance.get("output_sha256") or {}),
                           **(provenance.get("files_sha256") or {})}.items())

    rows = method_rows(data, method) + baseline_rows(data)
    result_rows = [{"method": _cell(r.get("method")) + (" (baseline)" if r.get("kind") == "baseline"
                                                         else " (scaling)" if r.get("kind") == "scaling"
                                                         else " (this model)" if r is row else ""),
                    "hyperparameters": _cell(r.get("hyperparameters") or "-"),
                    "n_models": _cell(r.get("n_models", "-")),
                    "held_in": _score(r, "held_in"), "held_out": _score(r, "held_out"),
                    "held_in_normalised": _score(r, "held_in_normalised"),
                    "held_out_normalised": _score(r, "held_out_normalised")} for r in rows]
    metric = str((data or {}).get("metric") or "score")
    held = {c["name"]: bool(c.get("held_in")) for c in (data or {}).get("cells", [])
            if isinstance(c, dict) and "name" in c}
    cell_rows = [{"cell": _cell(c), "split": ("held-in" if held[c] else "held-out")
                  if c in held else "-", "value": _cell(v)}
                 for c, v in ((row or {}).get("per_cell") or {}).items()]
    cell_rows.sort(key=lambda r: (r["split"] != "held-in", r["split"] != "held-out"))
    seeds = (data or {}).get("seeds")
    results_intro = (f"On the `{benchmark or 'benchmark'}` compositional benchmark ({metric} on "
                     "the test split"
                     + (f", mean over expert seeds {seeds}, confidence interval in brackets" if seeds
                        else "") + "; normalised: (merge - base) / (expert or oracle - base)). "
                     f"Rows of `{method}`" + (" and the baselines, for comparison" if
                                             baseline_rows(data) else "") + ":")

    cost = (row or {}).get("cost") or {}
    cost_lines = []
    seconds = cost.get("merge_seconds", provenance.get("merge_seconds"))
    if isinstance(seconds, (int, float)):
        cost_lines.append(f"merge time: {seconds:.2f} s on {provenance.get('device', '?')}")
    peak = cost.get("peak_bytes")
    cost_lines.append(f"peak memory: {peak / 2**20:.1f} MiB" if isinstance(peak, (int, float))
                      else "peak memory: not measured (`mergezoo bench` measures it)")
    flops = cost.get("flops")
    cost_lines.append(f"FLOPs of statistics and tuning: {flops:.3g}" if isinstance(flops, (int, float))
                      else "FLOPs of statistics and tuning: none counted (a data-free merge with "
                      "given hyperparameters needs no forward pass)" if not data else
                      "FLOPs: not reported")
    if isinstance(cost.get("tuning_evals"), (int, float)):
        cost_lines.append(f"hyperparameter search: {int(cost['tuning_evals'])} evaluations")
    requires = {**needs, **((row or {}).get("requires") or {})}
    base_need = requires.get("base_model")
    requires_lines = [
        "base model: " + ("yes" if base_need is True else "optional" if base_need == "optional"
                          else "no" if base_need is False else "unknown"),
        "statistics: " + (str(requires["statistics"]) if requires.get("statistics") else "none"),
        "data while merging: " + (data_need or "none"),
        "labels: " + ("yes" if requires.get("labels") is True else "no"),
    ]
    output_line = ("a PEFT LoRA adapter of rank "
                   f"{provenance.get('rank')} (the merged delta re-factorised by truncated SVD; "
                   "per-layer error in lora_errors.json)" if provenance.get("output") == "lora"
                   else f"component `{provenance['component']}` of a diffusers pipeline merged, "
                   "the rest copied from the base" if provenance.get("component")
                   else "the full merged model")
    env = provenance.get("environment") or {}
    template = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True, undefined=jinja2.StrictUndefined).get_template(TEMPLATE)
    content = template.render(
        card_data=card_data.to_yaml(), title=name, summary=summary, warnings=warnings,
        usage=_usage(folder, provenance, library, ref), method_line=method_line,
        hp_source=_hp_source(row),
        hyperparameter_lines=[f"`{k}`: {_cell(v)}" for k, v in hyperparameters.items()],
        seed=provenance.get("seed", 0), dtype=provenance.get("dtype", "float32"),
        out_dtype=provenance.get("out_dtype") or "that of the inputs",
        device=provenance.get("device", "?"), output_line=output_line, recipe_file=RECIPE_FILE,
        recipe=(recipe or yaml.safe_dump({"merge_method": method})).rstrip("\n"),
        input_rows=input_rows, output_files=output_files, result_rows=result_rows,
        results_intro=results_intro, cell_rows=cell_rows, metric=metric,
        plots=[dest for _, dest in _plots(data, results_dir, folder)],
        card_target=f"./{provenance.get('out_dir') or folder.name}",
        cost_lines=cost_lines, requires_lines=requires_lines,
        mergezoo_version=provenance.get("mergezoo", __version__), reproduce_target=ref,
        environment=", ".join(f"{k} {v}" for k, v in env.items()) or "not recorded")
    return ModelCard(content)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_card(model_dir: str | Path, results: dict | str | Path | None = None, *,
               repo_id: str | None = None) -> Path:
    """Write the card to `model_dir/README.md` atomically (replacing an older one) and return
    its path. With `results`, results.json and the plots are also copied into the folder (the
    card links them), so a push sends card, results and plots in one commit."""
    folder = Path(model_dir).expanduser()
    card = render_card(folder, results, repo_id=repo_id)
    data, results_dir = load_results(results)
    if data is not None:
        plots = _plots(data, results_dir, folder)
        for src, dest in plots:
            if src is not None:
                (folder / dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, folder / dest)
        target = folder / "results.json"
        if not (isinstance(results, (str, Path)) and Path(results).expanduser().absolute()
                == target.absolute()):
            # The copy's plot paths lead to the copies, relative to the copy.
            copy = dict(data, plots=[dest for _, dest in plots]) if "plots" in data else data
            _atomic_write(target, (json.dumps(copy, indent=2) + "\n").encode())
    path = folder / "README.md"
    _atomic_write(path, str(card).encode())
    return path


def refresh_card(model_dir: str | Path, repo_id: str) -> bool:
    """Before a push: re-render an untouched mergezoo card so its snippets name `repo_id`
    instead of the local folder. A card edited by hand (or a folder that is not a mergezoo
    merge) is left alone. Returns whether the card was rewritten."""
    folder = Path(model_dir).expanduser()
    card = folder / "README.md"
    if not (folder / PROVENANCE_FILE).is_file() or not card.is_file():
        return False
    results = folder / "results.json" if (folder / "results.json").is_file() else None
    try:
        untouched = str(render_card(folder, results)) == card.read_text()
    except ModelCardError:
        return False
    if untouched:
        _atomic_write(card, str(render_card(folder, results, repo_id=repo_id)).encode())
    return untouched
