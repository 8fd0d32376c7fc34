"""Score any model folder or Hub repo on a benchmark, after checking that it fits.

Example:
    >>> result = evaluate_model("merged/", get_benchmark("digits-domains"))   # doctest: +SKIP
    >>> result["held_in"], result["held_out"]
    (0.91, 0.62)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mergezoo.errors import IncompatibleModelsError, ModelDoesNotFitError


def reference_model(bench: Any, *, progress: bool = False) -> str | None:
    """The model a benchmark's models share their architecture with: its zoo's base (built
    if needed) for a benchmark with a toy zoo, the definition's `base_model` otherwise."""
    if bench.has_zoo:
        from mergezoo.eval.zoo_cache import build_zoo  # datasets/torch: imported when used

        return str(build_zoo(bench, progress=progress).model_path("base"))
    return bench.spec.base_model


def check_fits(bench: Any, model: str, reference: str | None) -> None:
    """Raise ModelDoesNotFitError naming every difference (architecture, tensor names and
    shapes, head size, vocabulary, adapter base) between `model` and the benchmark's models,
    read from configs and safetensors headers before any weight is loaded."""
    if reference is None:
        return
    from mergezoo.zoo.validate import validate_experts

    try:
        validate_experts([model], base=reference)
    except IncompatibleModelsError as err:
        raise ModelDoesNotFitError(
            f"{model} does not fit benchmark {bench.name!r} (its models are shaped like "
            f"{reference}):\n{err}") from None


def evaluate_model(model: str | Path, bench: Any, *, split: str = "test",
                   cells: Sequence[str] | None = None, allow_pickle: bool = False,
                   progress: bool = False) -> dict[str, Any]:
    """Check that `model` (a local folder or a Hub repo ID) fits `bench`, then score it on
    `cells` (default: every cell) of `split`."""
    from mergezoo.zoo.resolve import resolve_model

    wanted = [bench.cell(c).name for c in cells] if cells else None  # unknown cells fail here
    check_fits(bench, str(model), reference_model(bench, progress=progress))
    resolved = resolve_model(str(model), allow_pickle=allow_pickle)
    scores = bench.evaluate(resolved.path, split=split, cells=wanted)
    return {"model": str(model), "revision": resolved.revision, "benchmark": bench.name,
            "size": bench.size, "split": split, "metric": bench.spec.metric, "scores": scores,
            **bench.summarize(scores)}
