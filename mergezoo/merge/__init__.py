"""The merge engine: a registry of methods and a streaming engine that applies them.

Example:
    >>> from mergezoo.merge import merge_models, list_methods
    >>> [m.name for m in list_methods()][:3]
    ['average', 'breadcrumbs', 'breadcrumbs_ties']
    >>> merge_models("average", ["a", "b"], out_dir="soup")   # doctest: +SKIP
"""

from mergezoo.merge.api import (MergePlan, check_architectures, expand_experts, merge_models,
                                plan_merge, recipe_of, run_plan, run_recipe)
from mergezoo.merge.engine import MergeResult, merge_sources, pick_device
from mergezoo.merge.layers import LiNeS
from mergezoo.merge.memory import TaskVectors, merge_state_dicts
from mergezoo.merge.options import MergeOptions
from mergezoo.merge.recipe import MergeRecipe
from mergezoo.merge.registry import (
    Interval,
    MergeInputs,
    MergeMethod,
    Needs,
    get_method,
    list_methods,
    merge_method,
)
from mergezoo.merge.sources import TensorSource, open_source

__all__ = [
    "Interval", "LiNeS", "MergeInputs", "MergeMethod", "MergeOptions", "MergePlan", "MergeRecipe",
    "MergeResult", "Needs", "TaskVectors", "TensorSource", "check_architectures",
    "expand_experts", "get_method", "list_methods", "merge_method", "merge_models",
    "merge_sources", "merge_state_dicts", "open_source", "pick_device", "plan_merge",
    "recipe_of", "run_plan", "run_recipe",
]
