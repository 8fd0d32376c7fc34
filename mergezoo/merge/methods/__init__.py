"""Built-in merge methods. Importing this package registers them all.

- `task_vectors`: the task-vector family's methods (average, task arithmetic, TIES, DARE,
  Breadcrumbs, DELLA, Consensus), rows of one configuration (`family`);
- `slerp`: spherical interpolation (slerp, multislerp, karcher);
- `model_stock`: Model Stock.

Defining a method imports no torch (the maths imports it when it runs) and no accelerator
code.
"""

from mergezoo.merge.methods import model_stock, slerp, task_vectors  # noqa: F401
