"""The merge engine: a registry of methods and a streaming engine that applies them.

The names below are imported on first use (PEP 562), so that `mergezoo methods` lists the
methods without importing torch.

Example:
    >>> from mergezoo.merge import merge_models, list_methods
    >>> [m.name for m in list_methods()][:3]
    ['average', 'breadcrumbs', 'breadcrumbs_ties']
    >>> merge_models("average", ["a", "b"], out_dir="soup")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "check_architectures": "api", "expand_experts": "api", "merge_models": "api",
    "run_recipe": "api", "MergePlan": "api", "plan_merge": "api", "recipe_of": "api",
    "run_plan": "api", "MergeOptions": "options", "MergeResult": "engine", "merge_sources": "engine",
    "pick_device": "engine", "LiNeS": "layers", "TaskVectors": "memory",
    "merge_state_dicts": "memory", "MergeRecipe": "recipe", "Interval": "spec",
    "MergeInputs": "spec", "MergeMethod": "spec", "Needs": "spec", "merge_method": "spec",
    "get_method": "registry", "list_methods": "registry", "TensorSource": "sources",
    "open_source": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
