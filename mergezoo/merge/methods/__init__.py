"""Built-in merge methods, one module each. Importing this package registers them all."""

from mergezoo.merge.methods import (  # noqa: F401
    average,
    breadcrumbs,
    consensus,
    dare,
    della,
    model_stock,
    slerp,
    task_arithmetic,
    ties,
)
