"""mergezoo: merge fine-tuned experts from the Hugging Face Hub, evaluate the merges on
compositional splits, and publish them with reproducible model cards.

Example:
    >>> from mergezoo.merge import merge_models
    >>> merge_models("ties", ["org/expert-a", "org/expert-b"], base="org/base",
    ...              out_dir="merged", params={"density": 0.2})  # doctest: +SKIP
"""

__version__ = "0.1.0"
