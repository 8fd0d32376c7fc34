"""What a merge records about itself, so that anyone can check and repeat it.

The provenance file (`mergezoo_merge.json`) of a merged folder names every input the way a
stranger can find it again: a Hub repo ID pinned to a commit SHA, or, for a local folder, its
path *relative to the output* (never an absolute, private path) plus the sha256 of each of its
weight files, so a copy can be checked. It also records the hyperparameters under their recipe
names (`lambda`, not the Python argument `lambda_`) and the sha256 of every output file, which
`mergezoo reproduce` compares after re-running the merge.

Example:
    >>> portable_path(Path("/data/experts/a"), Path("/data/out/merged"))
    '../../experts/a'
    >>> recipe_names({"lambda_": 1.0, "density": 0.2},
    ...              {"lambda": "lambda_", "density": "density"})
    {'lambda': 1.0, 'density': 0.2}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from mergezoo.zoo.resolve import ResolvedModel

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Files of a merged folder that describe the merge rather than being its output: they are
# rewritten by every merge (relative paths, timings) or added later (card, results, plots), so
# `mergezoo reproduce` does not compare them.
DESCRIPTIVE_FILES = ("README.md", "mergezoo_merge.json", "mergezoo_recipe.yaml", "results.json")
DESCRIPTIVE_DIRS = ("plots",)
# Card fields of an input worth carrying into the merged model's card.
CARD_FIELDS = ("license", "datasets", "pipeline_tag", "library_name", "language")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def weight_hashes(root: Path, subfolder: str | None = None) -> dict[str, str]:
    """sha256 of every weight file under `root` (or only under `root/subfolder`), keyed by the
    path relative to `root` in POSIX form."""
    top = root / subfolder if subfolder else root
    if top.is_file():  # a single weights file given as the model
        return {top.name: sha256_file(top)}
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(top.rglob("*")) if p.is_file() and is_weight_file(p.name)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def output_hashes(folder: Path, *, skip: set[str] = frozenset()) -> dict[str, str]:
    """sha256 of every file of a merged folder except the descriptive ones (see
    DESCRIPTIVE_FILES) and those in `skip`."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        name = rel.as_posix()
        if not p.is_file() or name in skip or name in DESCRIPTIVE_FILES \
                or rel.parts[0] in DESCRIPTIVE_DIRS or any(s.startswith(".") for s in rel.parts):
            continue
        out[name] = sha256_file(p)
    return out


def portable_path(path: Path, relative_to: Path) -> str:
    """`path` relative to `relative_to` (both made absolute), or only its name when no relative
    path exists (another drive), so no absolute local path is ever recorded."""
    path, relative_to = Path(path).absolute(), Path(relative_to).absolute()
    try:
        return Path(os.path.relpath(path, relative_to)).as_posix()
    except ValueError:
        return path.name


def portable_ref(model: ResolvedModel, relative_to: Path) -> str:
    """How a recipe written into the output should name `model`: the reference as given for
    a Hub repo, the path relative to the output for a local folder."""
    if model.repo_id:
        return str(model.ref)
    return portable_path(model.path, relative_to)


def input_card(path: Path) -> dict[str, Any]:
    """The card fields of an input folder worth inheriting (license, datasets, ...), from its
    README.md front matter; {} when it has no card."""
    from huggingface_hub import metadata_load

    card = path / "README.md" if path.is_dir() else None
    if card is None or not card.is_file():
        return {}
    try:
        meta = metadata_load(card) or {}
    except (OSError, ValueError, yaml.YAMLError):  # an unreadable card, YAML that does not
        return {}                                   # parse or is not a mapping: nothing to inherit
    return {k: meta[k] for k in CARD_FIELDS if meta.get(k) is not None}


def input_record(model: ResolvedModel, relative_to: Path, subfolder: str | None) -> dict:
    """What the provenance file says about one input (no absolute local path)."""
    local = model.repo_id is None
    return {"ref": portable_ref(model, relative_to), "repo_id": model.repo_id,
            "revision": model.revision,
            "path": portable_path(model.path, relative_to) if local else None,
            "sha256": weight_hashes(model.path, subfolder), "card": input_card(model.path)}


def recipe_names(kwargs: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Hyperparameters keyed by their recipe names; `names` maps recipe name -> argument."""
    return {name: kwargs[arg] for name, arg in names.items() if arg in kwargs}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def set_config_dtype(folder: Path, out_dtype: torch.dtype | None) -> None:
    """Make config.json's dtype field follow the output dtype, so that
    `from_pretrained(dtype="auto")` loads a bfloat16 merge as bfloat16. transformers 5 writes
    `dtype`, older versions `torch_dtype`; whichever the config has is updated (a transformers
    config with neither gets `dtype`)."""
    if out_dtype is None:
        return
    path = folder / "config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    fields = [f for f in ("dtype", "torch_dtype") if f in config]
    if not fields and ("model_type" in config or "architectures" in config):
        fields = ["dtype"]
    if not fields:
        return
    for f in fields:
        config[f] = dtype_name(out_dtype)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
