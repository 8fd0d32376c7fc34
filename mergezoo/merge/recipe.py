"""Merge recipes: YAML files that say what to merge and how.

They read mergekit's `models:` form for the methods both tools share, so a mergekit recipe
means the same thing here:

    merge_method: ties
    base_model: org/base            # repo ID, repo ID@revision, or a local path
    models:
      - model: org/expert-a
        parameters: {weight: 1.0, density: 0.2}
      - model: org/expert-b
    parameters: {lambda: 1.0, density: 0.2}
    dtype: float32                  # compute dtype
    out_dtype: bfloat16             # output dtype (default: the inputs')

Example:
    >>> recipe = MergeRecipe.from_yaml("merge_method: average\\nmodels: [a, b]\\n")
    >>> [m.model for m in recipe.models]
    ['a', 'b']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mergezoo.errors import RecipeError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}
# mergekit fields mergezoo does not implement: refuse them rather than ignore them silently.
UNSUPPORTED = {"slices": "use the `models:` form",
               "tokenizer": "the base's tokenizer is copied", "chat_template": "not supported",
               "modules": "not supported"}


def parse_dtype(name: str | None, field: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise RecipeError(f"{field}: unknown dtype '{name}' (valid: {', '.join(DTYPES)})")
    return DTYPES[name]


class ModelEntry(BaseModel):
    """One input model and its per-model hyperparameters."""

    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class ExpertQuery(BaseModel):
    """Experts named by tag instead of by ID; resolved to IDs (and recorded) at merge time."""

    model_config = ConfigDict(extra="forbid")
    tag: str | list[str]
    base: str | None = None
    zoo: str | None = None  # a local zoo folder instead of the Hub
    limit: int | None = None


class LinesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float
    beta: float


class MergeRecipe(BaseModel):
    """A merge recipe. `models` and `experts` may both be given; their experts are concatenated."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] = Field(default_factory=list)
    experts: ExpertQuery | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str = "float32"
    out_dtype: str | None = None
    lines: LinesConfig | None = None
    component: str | None = None  # diffusers pipelines: merge this sub-folder, copy the rest
    seed: int = 0
    output: Literal["full", "lora"] = "full"  # a full model, or a LoRA of the merged delta
    rank: int | None = Field(default=None, ge=1)  # LoRA rank for `output: lora`
    # mergekit's tokenizer_source: only `base` (what mergezoo does: the base's tokenizer and
    # config are copied) is honoured; union or a model's tokenizer are refused.
    tokenizer_source: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _plain_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value

    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> "MergeRecipe":
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe is a YAML mapping, got {type(data).__name__}")
        for key, hint in UNSUPPORTED.items():
            if key in data:
                raise RecipeError(f"{source}: field '{key}' is not supported ({hint})")
        try:
            recipe = cls.model_validate(data)
        except ValidationError as err:
            lines = []
            for e in err.errors():
                where = ".".join(str(p) for p in e["loc"])
                msg = e["msg"]
                if e["type"] == "extra_forbidden":
                    valid = ", ".join(cls.model_fields)
                    msg = f"unknown field (valid: {valid})"
                lines.append(f"{where}: {msg}")
            raise RecipeError(f"{source}: invalid recipe:\n  " + "\n  ".join(lines)) from None
        if recipe.output == "lora" and (recipe.rank is None or recipe.base_model is None):
            raise RecipeError(f"{source}: output: lora needs a rank (--rank) and a base_model")
        if recipe.tokenizer_source is not None and (recipe.tokenizer_source != "base"
                                                     or recipe.base_model is None):
            raise RecipeError(
                f"{source}: tokenizer_source: {recipe.tokenizer_source!r} is not supported "
                "(only 'base', with a base_model: the base's tokenizer is copied)")
        parse_dtype(recipe.dtype, f"{source}: dtype")
        parse_dtype(recipe.out_dtype, f"{source}: out_dtype")
        return recipe

    @classmethod
    def from_yaml(cls, text: str, source: str = "recipe") -> "MergeRecipe":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise RecipeError(f"{source}: not valid YAML{where}: {problem}") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_file(cls, path: str | Path) -> "MergeRecipe":
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        return cls.from_yaml(path.read_text(), str(path))

    def to_yaml(self) -> str:
        data = self.model_dump(exclude_none=True, exclude_defaults=False)
        if not data.get("models"):
            data.pop("models", None)
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
