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


# Bounds checked on the YAML's events, before anything is built: a 1 KB recipe of nested
# aliases ("billion laughs") expands to billions of nodes, and 5000 nested lists overflow the
# recursive constructor. Real recipes are far inside these.
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64
MAX_MODELS = 1_000


def check_yaml_size(text: str, source: str = "recipe") -> None:
    """Raise `RecipeError` when the YAML in `text`, with its aliases expanded, would have more
    than MAX_YAML_NODES nodes or nest deeper than MAX_YAML_DEPTH, reading its parse events
    only (the parser is iterative; nothing is constructed).

    Example:
        >>> check_yaml_size("a: &x [1, 2]\\nb: *x\\n")
        >>> check_yaml_size("[" * 100 + "]" * 100)
        Traceback (most recent call last):
        mergezoo.errors.RecipeError: recipe: nested deeper than 64 levels (line 1)
    """
    sizes: dict[str, int] = {}  # anchor -> expanded node count of its node
    stack: list[list] = [[0, None]]  # [nodes so far, anchor] per open collection
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([1, event.anchor])
            if len(stack) - 1 > MAX_YAML_DEPTH:
                raise RecipeError(f"{source}: nested deeper than {MAX_YAML_DEPTH} levels "
                                  f"(line {event.start_mark.line + 1})")
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            count, anchor = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            count, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            count, anchor = sizes.get(event.anchor, 1), None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = count
        stack[-1][0] += count
        if stack[-1][0] > MAX_YAML_NODES or count > MAX_YAML_NODES:
            raise RecipeError(f"{source}: more than {MAX_YAML_NODES} values once its aliases are "
                              f"expanded (line {event.start_mark.line + 1}); refusing to build it")


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
        if len(recipe.models) > MAX_MODELS:
            raise RecipeError(f"{source}: {len(recipe.models)} models; a recipe merges at most "
                              f"{MAX_MODELS}")
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
            check_yaml_size(text, source)
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
