"""Benchmarks defined in YAML over Hub experts and Hub datasets.

The `data` section says how to load every cell's splits with `datasets.load_dataset`. Its
top-level keys are defaults; `factors: {<factor>: {<value>: {...}}}` overrides them per factor
value and `cells: {<cell>: {...}}` per cell (later wins; `filters` are merged key by key):

    data:
      path: tanganke/sun397          # load_dataset(path, name, split=...)
      name: null
      splits: {train: "train[:95%]", validation: "train[95%:]", test: "test"}
      input_column: image
      label_column: label
      filters: {}                    # column: value, or column: [allowed values]
      factors:
        task:
          svhn: {path: ufldl-stanford/svhn, name: cropped_digits}

`experts` maps each held-in cell to model references (repo ID, repo ID@revision or local path,
one per seed) or to `{tags: [...]}` to find them by Hub tags.

Example:
    >>> bench = HubBenchmark.from_yaml("clip-vit-b32-eight-tasks.yaml")    # doctest: +SKIP
    >>> plan = bench.plan()
    >>> plan.data["mnist"]["test"]
    LoadCall(path='ylecun/mnist', name=None, split='test', filters={}, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mergezoo.errors import BenchmarkDefinitionError, BenchmarkError
from mergezoo.eval.benchmark import Benchmark
from mergezoo.eval.spec import ID_COLUMN, LABEL_COLUMN, SPLITS, BenchmarkSpec, Cell

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

DATA_KEYS = {"path", "name", "splits", "input_column", "label_column", "filters", "data_files",
             "revision", "label_names", "prompt_template", "max_examples"}
TASKS = ("image-classification", "zero-shot-image-classification", "text-classification")


@dataclass(frozen=True)
class LoadCall:
    """One `datasets.load_dataset` call and the row filter applied after it."""

    path: str
    name: str | None
    split: str
    filters: dict[str, Any] = field(default_factory=dict)
    input_column: str = "image"
    label_column: str = "label"
    revision: str | None = None
    data_files: Any = None
    max_examples: int | None = None


@dataclass
class BenchmarkPlan:
    """What evaluating a YAML benchmark will fetch: the base, the experts, each cell's data."""

    benchmark: str
    base_model: str | None
    experts: dict[str, Any]
    data: dict[str, dict[str, LoadCall]]

    def describe(self) -> list[str]:
        lines = [f"benchmark {self.benchmark}: base {self.base_model}"]
        for cell, calls in self.data.items():
            lines.append(f"  {cell}: experts {self.experts.get(cell, '-')}")
            for split, call in calls.items():
                extra = f" where {call.filters}" if call.filters else ""
                lines.append(f"    {split}: load_dataset({call.path!r}, {call.name!r}, "
                             f"split={call.split!r}){extra}")
        return lines


def _load_with_ids(call: LoadCall) -> Dataset:
    """load_dataset for a split expression ("train[:95%]", "train[95%:]+test"), each row tagged
    with `source_id` = "<path>[/<name>]:<split>:<row>" in the WHOLE source split, so overlapping
    split expressions share ids and `check_disjoint` catches them."""
    import re

    import datasets

    source = call.path + (f"/{call.name}" if call.name else "")
    names = sorted({re.split(r"[\[(]", part.strip())[0].strip() for part in call.split.split("+")})
    full = {}
    for name in names:
        ds = datasets.load_dataset(call.path, call.name, split=name, revision=call.revision,
                                   data_files=call.data_files)
        full[name] = ds.add_column(ID_COLUMN, [f"{source}:{name}:{i}" for i in range(len(ds))])
    spans = datasets.ReadInstruction.from_spec(call.split).to_absolute(
        {n: len(d) for n, d in full.items()})
    parts = [full[s.splitname].select(range(s.from_, s.to)) for s in spans]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _row_filter(filters: Mapping[str, Any]):
    def keep(row: Mapping[str, Any]) -> bool:
        for column, allowed in filters.items():
            value = row[column]
            if isinstance(allowed, list):
                if value not in allowed:
                    return False
            elif value != allowed:
                return False
        return True
    return keep


class HubBenchmark(Benchmark):
    """A benchmark whose experts and data live on the Hub (or on local paths), from YAML."""

    def __init__(self, spec: BenchmarkSpec) -> None:
        if spec.task not in TASKS:
            raise BenchmarkDefinitionError(f"benchmark {spec.name!r}: task {spec.task!r} is not "
                                           f"one of {TASKS}")
        if not spec.data:
            raise BenchmarkDefinitionError(f"benchmark {spec.name!r}: a YAML benchmark needs a "
                                           "`data` section")
        super().__init__(spec)
        for cell in self.cells:
            self.cell_data(cell)  # validate early, naming the culprit
        for cell in self.held_in_cells:
            if cell.name not in spec.experts:
                raise BenchmarkDefinitionError(f"benchmark {spec.name!r}: held-in cell "
                                               f"{cell.name!r} has no experts")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "HubBenchmark":
        return cls(BenchmarkSpec.from_yaml(Path(path)))

    # -- planning ---------------------------------------------------------------------------
    def cell_data(self, cell: Cell | str) -> dict[str, Any]:
        """The merged data settings of one cell (defaults < factor values < the cell)."""
        cell = cell if isinstance(cell, Cell) else self.cell(cell)
        raw = self.spec.data
        layers = [{k: v for k, v in raw.items() if k not in ("factors", "cells")}]
        for factor, value in cell.factors.items():
            layers.append((raw.get("factors") or {}).get(factor, {}).get(value, {}))
        layers.append((raw.get("cells") or {}).get(cell.name, {}))
        merged: dict[str, Any] = {"filters": {}}
        for layer in layers:
            unknown = set(layer) - DATA_KEYS
            if unknown:
                raise BenchmarkDefinitionError(f"benchmark {self.name!r}, cell {cell.name!r}: "
                                               f"unknown data key(s) {sorted(unknown)}")
            for key, value in layer.items():
                if key == "filters":
                    merged["filters"].update(value or {})
                else:
                    merged[key] = value
        if not merged.get("path"):
            raise BenchmarkDefinitionError(f"benchmark {self.name!r}, cell {cell.name!r}: no "
                                           "dataset `path`")
        splits = merged.get("splits") or {s: s for s in SPLITS}
        if set(splits) != set(SPLITS):
            raise BenchmarkDefinitionError(f"benchmark {self.name!r}, cell {cell.name!r}: "
                                           f"`splits` must map {list(SPLITS)}, got {sorted(splits)}")
        merged["splits"] = splits
        return merged

    def plan(self) -> BenchmarkPlan:
        """The load calls and expert references, without fetching anything."""
        data = {}
        for cell in self.cells:
            d = self.cell_data(cell)
            data[cell.name] = {split: LoadCall(
                path=d["path"], name=d.get("name"), split=expr, filters=dict(d["filters"]),
                input_column=d.get("input_column", "image"),
                label_column=d.get("label_column", LABEL_COLUMN), revision=d.get("revision"),
                data_files=d.get("data_files"), max_examples=d.get("max_examples"))
                for split, expr in d["splits"].items()}
        return BenchmarkPlan(self.name, self.spec.base_model, dict(self.spec.experts), data)

    def expert_refs(self, cell: str) -> list[str]:
        """The model references of a held-in cell's experts (tags resolved through the zoo)."""
        entry = self.spec.experts.get(cell)
        if entry is None:
            raise BenchmarkError(f"benchmark {self.name!r}: no experts for cell {cell!r}")
        if isinstance(entry, Mapping) and "tags" in entry:
            from mergezoo.zoo.search import find_experts  # eval may import zoo

            return find_experts(list(entry["tags"]), base=self.spec.base_model,
                                zoo=entry.get("zoo"))
        return [str(r) for r in (entry if isinstance(entry, list) else [entry])]

    # -- data -------------------------------------------------------------------------------
    def make_data(self) -> dict[str, DatasetDict]:
        """load_dataset + filter for every cell and split (needs network for Hub datasets)."""
        import datasets

        out = {}
        for cell, calls in self.plan().data.items():
            parts = {}
            for split, call in calls.items():
                ds = _load_with_ids(call)
                if call.filters:
                    ds = ds.filter(_row_filter(call.filters))
                if call.max_examples:
                    ds = ds.select(range(min(call.max_examples, len(ds))))
                if call.label_column != LABEL_COLUMN:
                    ds = ds.rename_column(call.label_column, LABEL_COLUMN)
                parts[split] = ds
            out[cell] = datasets.DatasetDict(parts)
        return out

    # -- models -----------------------------------------------------------------------------
    def load_model(self, model_dir: str | Path) -> Any:
        """image-/text-classification: Auto* model and processor from the folder.
        zero-shot-image-classification: the base CLIP with the folder's vision tower (a
        CLIPVisionModel or a whole CLIPModel), classifying by label-name text embeddings."""
        import transformers as tf

        path = str(model_dir)
        if self.spec.task == "image-classification":
            return (tf.AutoModelForImageClassification.from_pretrained(path).eval(),
                    tf.AutoImageProcessor.from_pretrained(path))
        if self.spec.task == "text-classification":
            return (tf.AutoModelForSequenceClassification.from_pretrained(path).eval(),
                    tf.AutoTokenizer.from_pretrained(path))
        if not self.spec.base_model:
            raise BenchmarkDefinitionError(f"benchmark {self.name!r}: zero-shot needs base_model")
        clip = tf.CLIPModel.from_pretrained(self.spec.base_model).eval()
        vision = tf.CLIPVisionModel.from_pretrained(path)
        clip.vision_model.load_state_dict(vision.vision_model.state_dict())
        return clip, tf.CLIPProcessor.from_pretrained(self.spec.base_model)

    def predict(self, model: Any, dataset: Dataset, cell: Cell) -> list[int]:
        import torch

        net, processor = model
        d = self.cell_data(cell)
        column = d.get("input_column", "image")
        preds: list[int] = []
        if self.spec.task == "zero-shot-image-classification":
            names = d.get("label_names") or dataset.features[LABEL_COLUMN].names
            template = d.get("prompt_template", "a photo of a {}.")
            text = processor(text=[template.format(n) for n in names], return_tensors="pt",
                             padding=True)
            with torch.no_grad():
                text_emb = torch.nn.functional.normalize(net.get_text_features(**text), dim=-1)
        for start in range(0, len(dataset), 64):
            batch = dataset[start:start + 64][column]
            with torch.no_grad():
                if self.spec.task == "text-classification":
                    logits = net(**processor(batch, return_tensors="pt", padding=True,
                                             truncation=True)).logits
                elif self.spec.task == "image-classification":
                    images = [im.convert("RGB") for im in batch]
                    logits = net(**processor(images=images, return_tensors="pt")).logits
                else:
                    images = [im.convert("RGB") for im in batch]
                    emb = net.get_image_features(**processor(images=images, return_tensors="pt"))
                    logits = torch.nn.functional.normalize(emb, dim=-1) @ text_emb.T
            preds += logits.argmax(-1).tolist()
        return preds
