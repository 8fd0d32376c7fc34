"""Write a benchmark's toy zoo: Hub-style model repo folders with cards and tags, the per-cell
datasets, and a manifest (`zoo.json`) with every file's sha256.

Layout of a zoo folder (every model folder can be pushed to the Hub as it is):

    <zoo>/
      zoo.json                         manifest: definition, models, datasets, file hashes
      benchmark.yaml                   the benchmark definition
      sanity.json                      base / expert / multitask / oracle scores per cell
      build.json                       build time and library versions (not hashed)
      <bench>-base/                    config.json, model.safetensors, README.md (card)
      <bench>-expert-<cell>-seed<k>/   one per held-in cell and seed
      <bench>-multitask-seed0/         trained on all held-in cells
      <bench>-oracle-<cell>-seed0/     one per held-out cell
      datasets/mergezoo/<bench>-data/  a Hub-style dataset repo (README.md card), holding
          <cell>/                      DatasetDict.save_to_disk: train/ validation/ test/
    (the data sits three levels down, so a local-zoo scan of repo folders one or two levels deep
    lists only the models).

Example:
    >>> writer = ZooWriter(tmp_dir, spec)                                   # doctest: +SKIP
    >>> writer.save_model(model, role="expert", cell="group0-inverted", seed=0,
    ...                   recipe={"lr": 1e-3}, base_model=writer.repo_name("base"))
    >>> writer.finish()
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from mergezoo.errors import BenchmarkError
from mergezoo.eval.spec import BenchmarkSpec

ROLES = ("base", "expert", "multitask", "oracle")
MANIFEST = "zoo.json"
UNHASHED = {MANIFEST, "build.json"}  # files whose content may differ between identical builds
BENCH_TAG_PREFIX = "mergezoo-bench:"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path, skip: Iterable[str] = UNHASHED) -> dict[str, str]:
    """{relative path: sha256} for every file under `root`, sorted, skipping top-level `skip`."""
    skip = set(skip)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in skip:
            out[rel] = sha256_file(path)
    return out


def model_tags(spec: BenchmarkSpec, role: str, cell: str | None, seed: int | None,
               trained_on: Sequence[str]) -> list[str]:
    """The Hub tags of a zoo model: mergezoo, mergezoo-bench:<name>, role:, cell:, seed:, and
    one `<factor>:<value>` per factor of its cell."""
    tags = ["mergezoo", f"{BENCH_TAG_PREFIX}{spec.name}", f"role:{role}"]
    if spec.size:
        tags.append(f"mergezoo-size:{spec.size}")
    if cell is not None:
        tags.append(f"cell:{cell}")
        tags += [f"{f}:{v}" for f, v in spec.cell(cell).factors.items()]
    if seed is not None:
        tags.append(f"seed:{seed}")
    tags += [f"trained-on:{c}" for c in trained_on if c != cell]
    return tags


class ZooWriter:
    """Saves models, cards and data into a zoo folder being built, and its manifest at the end."""

    def __init__(self, root: str | Path, spec: BenchmarkSpec, *, license: str = "apache-2.0") -> None:
        self.root = Path(root)
        self.spec = spec
        self.license = license
        self.models: list[dict[str, Any]] = []
        self.datasets: dict[str, Any] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "benchmark.yaml").write_text(spec.to_yaml())

    def detached(self) -> ZooWriter:
        """A copy for a worker process: it saves model folders (and cards) into the same zoo
        but lists them only in its own `models`; the owner adds them with `record`."""
        twin = copy.copy(self)
        twin.models, twin.datasets = [], {}
        return twin

    def record(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """List models saved by a `detached` writer in this zoo's manifest, in the given order."""
        for entry in entries:
            if not (self.root / entry["name"]).is_dir():
                raise BenchmarkError(f"{entry['name']}: recorded but not saved in {self.root}")
            self.models.append(dict(entry))

    @property
    def data_path(self) -> str:
        """Where the per-cell datasets go, relative to the zoo root."""
        return f"datasets/mergezoo/{self.spec.name}-data"

    def repo_name(self, role: str, cell: str | None = None, seed: int | None = None) -> str:
        """`<bench>-<role>[-<cell>][-seed<k>]`, e.g. digits-domains-expert-group0-inverted-seed0."""
        parts = [self.spec.name, role] + ([cell] if cell else []) + (
            [f"seed{seed}"] if seed is not None else [])
        return "-".join(parts)

    def model_dir(self, role: str, cell: str | None = None, seed: int | None = None) -> Path:
        return self.root / self.repo_name(role, cell, seed)

    def save_model(self, model: Any, *, role: str, cell: str | None = None, seed: int | None = None,
                   recipe: Mapping[str, Any], base_model: str | None = None,
                   trained_on: Sequence[str] = (), pipeline_tag: str | None = None,
                   library_name: str = "transformers", also_save: Sequence[Any] = (),
                   summary: str = "") -> Path:
        """Save `model` (anything with `save_pretrained`: transformers, diffusers, PEFT) and
        `also_save` (processors, tokenizers) into a repo folder with a card; return the folder."""
        if cell is not None:
            self.spec.cell(cell)  # raises on an unknown cell
        for c in trained_on:
            self.spec.cell(c)
        path = self.model_dir(role, cell, seed)
        if path.exists():
            raise BenchmarkError(f"{path.name}: saved twice while building {self.spec.name}")
        model.save_pretrained(str(path))
        for extra in also_save:
            extra.save_pretrained(str(path))
        tags = model_tags(self.spec, role, cell, seed, trained_on)
        entry = {"name": path.name, "role": role, "cell": cell, "seed": seed,
                 "trained_on": list(trained_on), "base_model": base_model, "tags": tags,
                 "library_name": library_name}
        self._write_card(path, entry, recipe, pipeline_tag, summary)
        self.models.append(entry)
        return path

    def _write_card(self, path: Path, entry: Mapping[str, Any], recipe: Mapping[str, Any],
                    pipeline_tag: str | None, summary: str) -> None:
        from huggingface_hub import ModelCard, ModelCardData

        card_data = ModelCardData(
            base_model=entry["base_model"], library_name=entry["library_name"],
            license=self.license, pipeline_tag=pipeline_tag or _pipeline_tag(self.spec.task),
            tags=entry["tags"],
            mergezoo={"benchmark": self.spec.name, "size": self.spec.size, "role": entry["role"],
                      "cell": entry["cell"], "seed": entry["seed"],
                      "trained_on": entry["trained_on"],
                      "definition_hash": self.spec.definition_hash()[:12]},
        )
        what = {"base": "the pretrained base model",
                "expert": f"an expert fine-tuned on cell `{entry['cell']}`",
                "multitask": "a multitask model trained on all held-in cells together",
                "oracle": f"an oracle trained on held-out cell `{entry['cell']}`"}.get(
                    entry["role"], f"a `{entry['role']}` model")
        body = (f"# {entry['name']}\n\n"
                f"Part of the toy zoo of the mergezoo compositional benchmark "
                f"`{self.spec.name}` (size `{self.spec.size}`): {what}.\n\n"
                + (f"{summary}\n\n" if summary else "")
                + "Trained on cells: "
                + (", ".join(f"`{c}`" for c in entry["trained_on"]) or "none") + ".\n\n"
                "## Training recipe\n\n```yaml\n"
                + yaml.safe_dump(dict(recipe), sort_keys=True, default_flow_style=None, width=100)
                + "```\n\nRebuild it with `mergezoo build-zoo "
                + f"{self.spec.name} --size {self.spec.size}` (deterministic: same files, same "
                "hashes).\n")
        content = f"---\n{card_data.to_yaml()}\n---\n\n{body}"
        ModelCard(content).save(path / "README.md")

    def save_datasets(self, data: Mapping[str, Any], *, description: str = "",
                      license: str | None = None) -> Path:
        """Save every cell's DatasetDict under datasets/mergezoo/<bench>-data/<cell>/, with a card
        (`description`: where the data come from; `license`: the data's, default the zoo's)."""
        root = self.root / self.data_path
        for cell_name, dd in data.items():
            self.spec.cell(cell_name)
            dd.save_to_disk(str(root / cell_name))
            self.datasets[cell_name] = {split: len(ds) for split, ds in dd.items()}
        front = yaml.safe_dump({"license": license or self.license, "tags": [
            "mergezoo", f"{BENCH_TAG_PREFIX}{self.spec.name}", "role:dataset"],
            "mergezoo": {"benchmark": self.spec.name, "size": self.spec.size}}, sort_keys=False)
        (root / "README.md").write_text(
            f"---\n{front}---\n\n# {self.spec.name} data (size {self.spec.size})\n\n"
            + (f"{description}\n\n" if description else "")
            + "One folder per cell, each a `datasets.DatasetDict` saved with `save_to_disk` "
            "(splits train / validation / test; column `source_id` names the source example, so "
            "no test example is in any train split). Push a cell with "
            "`load_from_disk(cell).push_to_hub(repo_id, config_name=cell)`.\n\n"
            + "\n".join(f"- `{c}`: " + ", ".join(f"{s} {n}" for s, n in self.datasets[c].items())
                        for c in data) + "\n")
        return root

    def finish(self) -> dict[str, Any]:
        """Write zoo.json (definition, models, datasets, sha256 of every other file)."""
        manifest = {"benchmark": self.spec.name, "size": self.spec.size,
                    "definition_hash": self.spec.definition_hash(),
                    "definition": self.spec.to_dict(), "models": self.models,
                    "datasets": {"path": self.data_path,
                                 "cells": self.datasets},
                    "files": hash_tree(self.root)}
        tmp = self.root / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
        os.replace(tmp, self.root / MANIFEST)
        return manifest


def _pipeline_tag(task: str) -> str | None:
    return {"image-classification": "image-classification",
            "text-classification": "text-classification",
            "zero-shot-image-classification": "zero-shot-image-classification",
            "image-generation": "unconditional-image-generation",
            "sentence-similarity": "sentence-similarity"}.get(task)
