"""The registry of merge methods: look one up by name or alias, or list them all.

The types of a method and the `@merge_method` decorator are in `mergezoo.merge.spec`; the
built-in methods live in `mergezoo.merge.methods`, which this module imports so that they are
registered before any lookup. (Keeping the decorator apart means a method module never imports
this one: no import cycle.)

Example:
    >>> get_method("linear").name
    'average'
    >>> "ties" in [m.name for m in list_methods()]
    True
"""

from __future__ import annotations

import mergezoo.merge.methods  # noqa: F401  (registers the built-in methods)
from mergezoo.errors import UnknownMethodError
from mergezoo.merge.spec import (_ALIASES, _REGISTRY, Hyperparameter, Interval, MergeInputs,
                                 MergeMethod, Needs, merge_method)

__all__ = ["Hyperparameter", "Interval", "MergeInputs", "MergeMethod", "Needs", "get_method",
           "list_methods", "merge_method"]


def get_method(name: str) -> MergeMethod:
    """Return the method registered as `name` (or one of its aliases)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise UnknownMethodError(
            f"unknown merge method '{name}' (valid: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[key]


def list_methods() -> list[MergeMethod]:
    """All registered methods, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
