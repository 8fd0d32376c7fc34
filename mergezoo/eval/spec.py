"""The data form of a compositional benchmark: factors, cells, metric, experts, data.

A `BenchmarkSpec` is plain data with a YAML form. Built-in benchmarks make one in Python (one per
size); users write one in YAML over Hub experts and Hub datasets. Its `definition_hash()` names
the cached zoo, so a zoo is rebuilt exactly when its definition changes.

Example:
    >>> spec = BenchmarkSpec(
    ...     name="toy", factors={"group": ["g0", "g1"], "domain": ["plain", "inverted"]},
    ...     cells=grid_cells({"group": ["g0", "g1"], "domain": ["plain", "inverted"]},
    ...                      held_in=["g0-plain", "g1-inverted"]))
    >>> [c.name for c in spec.held_out_cells]
    ['g0-inverted', 'g1-plain']
    >>> BenchmarkSpec.from_yaml(spec.to_yaml()) == spec
    True
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from mergezoo.errors import BenchmarkDefinitionError

SPLITS = ("train", "validation", "test")
SIZES = ("tiny", "default")
ID_COLUMN = "source_id"  # every per-cell dataset carries it: which source example a row renders
LABEL_COLUMN = "label"
CELL_NAME_FORMAT_DEFAULT = "-"  # joins factor values in factor order: "group0-inverted"

_SPEC_FIELDS = {"name", "description", "task", "metric", "factors", "cells", "held_in",
                "cell_name", "base_model", "experts", "data", "params", "size", "version"}


@dataclass
class Cell:
    """One combination of factor values, e.g. {"group": "group0", "domain": "inverted"}."""

    name: str
    factors: dict[str, str]
    held_in: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.factors, "held_in": self.held_in}

    @property
    def tag(self) -> str:
        """The Hub tag that marks a model trained on this cell: `cell:<name>`."""
        return f"cell:{self.name}"


def cell_name(values: Mapping[str, str], factor_order: Iterable[str], fmt: str | None = None) -> str:
    """Name a cell: `fmt.format(**values)` when `fmt` is given, else the values joined by "-"."""
    if fmt and fmt != CELL_NAME_FORMAT_DEFAULT:
        try:
            return fmt.format(**values)
        except KeyError as err:
            raise BenchmarkDefinitionError(f"cell_name {fmt!r} names unknown factor {err}") from None
    return "-".join(str(values[f]) for f in factor_order)


def grid_cells(factors: Mapping[str, list[str]], held_in: Iterable[str] = (),
               fmt: str | None = None) -> list[Cell]:
    """Every combination of factor values (first factor varies slowest), held-in where named."""
    held = set(held_in)
    names = list(factors)
    cells = [Cell(name=cell_name(dict(zip(names, combo)), names, fmt),
                  factors=dict(zip(names, combo)))
             for combo in itertools.product(*(factors[n] for n in names))]
    known = {c.name for c in cells}
    if held - known:
        raise BenchmarkDefinitionError(f"held-in cells {sorted(held - known)} are not in the grid "
                                       f"(cells: {sorted(known)})")
    for c in cells:
        c.held_in = c.name in held
    return cells


@dataclass
class BenchmarkSpec:
    """A benchmark's definition. Fields:

    - name: benchmark name (`digits-domains`); factors: factor -> ordered values.
    - cells: the grid cells with their held-in flags (held-in cells have experts).
    - task: `image-classification`, `text-classification`, `zero-shot-image-classification`,
      `image-generation`, ...; metric: a metric module shipped in `mergezoo/eval/metrics`
      (or a path to an `evaluate` metric script).
    - base_model: the pretrained model (repo ID or local path), for YAML definitions.
    - experts: cell name -> list of model references (repo ID, repo ID@rev, local path) or
      {"tags": [...]} to find them by Hub tags; for YAML definitions.
    - data: how to load per-cell data (YAML definitions; see `hub.py`).
    - params: build parameters of a built-in benchmark (sizes, training recipe).
    - size: `tiny` / `default` for built-ins; version: bump when the build code changes.
    """

    name: str
    factors: dict[str, list[str]]
    cells: list[Cell]
    task: str = "image-classification"
    metric: str = "accuracy"
    description: str = ""
    base_model: str | None = None
    experts: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    size: str | None = None
    version: int = 1

    def __post_init__(self) -> None:
        self.validate()

    # -- queries -------------------------------------------------------------------------
    @property
    def held_in_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.held_in]

    @property
    def held_out_cells(self) -> list[Cell]:
        return [c for c in self.cells if not c.held_in]

    def cell(self, name: str) -> Cell:
        """The cell called `name`; raises BenchmarkDefinitionError naming the known cells."""
        for c in self.cells:
            if c.name == name:
                return c
        raise BenchmarkDefinitionError(f"benchmark {self.name!r} has no cell {name!r}; "
                                       f"cells: {', '.join(c.name for c in self.cells)}")

    def validate(self) -> None:
        """Check names, factors and cells agree; raise BenchmarkDefinitionError naming the culprit."""
        if not self.name or not isinstance(self.name, str):
            raise BenchmarkDefinitionError("a benchmark needs a non-empty `name`")
        if not self.factors:
            raise BenchmarkDefinitionError(f"benchmark {self.name!r}: `factors` is empty")
        seen: set[str] = set()
        for c in self.cells:
            if c.name in seen:
                raise BenchmarkDefinitionError(f"benchmark {self.name!r}: cell {c.name!r} twice")
            seen.add(c.name)
            if set(c.factors) != set(self.factors):
                raise BenchmarkDefinitionError(
                    f"benchmark {self.name!r}: cell {c.name!r} sets factors {sorted(c.factors)}, "
                    f"expected {sorted(self.factors)}")
            for f, v in c.factors.items():
                if v not in self.factors[f]:
                    raise BenchmarkDefinitionError(
                        f"benchmark {self.name!r}: cell {c.name!r} has {f}={v!r}, not one of "
                        f"{self.factors[f]}")
        for name in self.experts:
            if name not in seen:
                raise BenchmarkDefinitionError(f"benchmark {self.name!r}: experts given for "
                                               f"unknown cell {name!r}")
            if not self.cell(name).held_in:
                raise BenchmarkDefinitionError(f"benchmark {self.name!r}: experts given for "
                                               f"held-out cell {name!r}")
        if self.size is not None and self.size not in SIZES:
            raise BenchmarkDefinitionError(f"size {self.size!r} is not one of {SIZES}")

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "description": self.description, "task": self.task,
            "metric": self.metric, "factors": {k: list(v) for k, v in self.factors.items()},
            "cells": [c.to_dict() for c in self.cells],
        }
        for key in ("base_model", "size"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("experts", "data", "params"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        out["version"] = self.version
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "definition") -> "BenchmarkSpec":
        """Parse the dict form. `cells` may be omitted: then the full grid, with `held_in` a list
        of cell names; cells are named by `cell_name` (a format string such as "{group}-{domain}")."""
        if not isinstance(raw, Mapping):
            raise BenchmarkDefinitionError(f"{source}: expected a mapping, got {type(raw).__name__}")
        unknown = set(raw) - _SPEC_FIELDS
        if unknown:
            raise BenchmarkDefinitionError(f"{source}: unknown field(s) {sorted(unknown)}; "
                                           f"known: {sorted(_SPEC_FIELDS)}")
        for key in ("name", "factors"):
            if key not in raw:
                raise BenchmarkDefinitionError(f"{source}: missing required field `{key}`")
        factors = raw["factors"]
        if not isinstance(factors, Mapping) or not all(isinstance(v, list) for v in factors.values()):
            raise BenchmarkDefinitionError(f"{source}: `factors` must map names to lists of values")
        factors = {str(k): [str(x) for x in v] for k, v in factors.items()}
        fmt = raw.get("cell_name")
        if "cells" in raw:
            cells = []
            for i, item in enumerate(raw["cells"]):
                if not isinstance(item, Mapping):
                    raise BenchmarkDefinitionError(f"{source}: cells[{i}] is not a mapping")
                values = {f: str(item[f]) for f in factors if f in item}
                extra = set(item) - set(factors) - {"name", "held_in"}
                if extra:
                    raise BenchmarkDefinitionError(f"{source}: cells[{i}] has unknown keys "
                                                   f"{sorted(extra)}")
                if len(values) != len(factors):
                    raise BenchmarkDefinitionError(
                        f"{source}: cells[{i}] misses factor(s) {sorted(set(factors) - set(values))}")
                name = str(item.get("name") or cell_name(values, factors, fmt))
                cells.append(Cell(name=name, factors=values, held_in=bool(item.get("held_in", False))))
            if "held_in" in raw:
                held = set(raw["held_in"])
                for c in cells:
                    c.held_in = c.held_in or c.name in held
        else:
            cells = grid_cells(factors, raw.get("held_in", ()), fmt)
        return cls(name=str(raw["name"]), factors=factors, cells=cells,
                   task=str(raw.get("task", "image-classification")),
                   metric=str(raw.get("metric", "accuracy")),
                   description=str(raw.get("description", "")),
                   base_model=raw.get("base_model"), experts=dict(raw.get("experts") or {}),
                   data=dict(raw.get("data") or {}), params=dict(raw.get("params") or {}),
                   size=raw.get("size"), version=int(raw.get("version", 1)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> "BenchmarkSpec":
        """Parse YAML text, or the file at a path ending in .yaml/.yml."""
        source = "definition"
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or (text.endswith((".yaml", ".yml")) and "\n" not in text):
            path = Path(text_or_path).expanduser()
            if not path.is_file():
                raise BenchmarkDefinitionError(f"{path}: no such benchmark definition file")
            source, text = str(path), path.read_text()
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise BenchmarkDefinitionError(f"{source}: not valid YAML: {err}") from None
        return cls.from_dict(raw, source=source)

    def definition_hash(self) -> str:
        """sha256 of the canonical JSON form; names the cached zoo."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canon.encode()).hexdigest()
