"""How to run a merge, as opposed to what to merge (that is the recipe).

`MergeOptions` holds the settings that change where and how a merge runs but never which
tensors it writes: the compute device, the CPU kernels, the shard size, whether an existing
output may be replaced, the progress bar, and whether pickle checkpoints may be loaded. The
recipe (`MergeRecipe`) plus these options is everything a merge needs.

The kernel mode is an option like the others. When it is not given, the `MERGEZOO_KERNELS`
environment variable is read once, as a documented fallback default, when the options are
built; nothing in mergezoo writes that variable.

Example:
    >>> opts = MergeOptions(device="cpu", kernels="eager", progress=False)
    >>> opts.kernels, opts.overwrite
    ('eager', False)
    >>> MergeOptions.of(opts, overwrite=True).overwrite
    True
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from mergezoo.errors import ConfigurationError

KERNEL_MODES = ("auto", "fused", "eager")
KERNELS_ENV = "MERGEZOO_KERNELS"


def default_kernel_mode() -> str:
    """`MERGEZOO_KERNELS` (auto, fused or eager; default auto), for options that name none."""
    value = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if value not in KERNEL_MODES:
        raise ConfigurationError(f"{KERNELS_ENV}={value!r} is not one of {', '.join(KERNEL_MODES)}")
    return value


@dataclass(frozen=True)
class MergeOptions:
    """Where and how a merge runs; none of these changes the bytes it writes.

    - `device`: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
    - `kernels`: the fused CPU kernels: "auto" (when the merge is large enough to win back
      loading them), "fused" (always) or "eager" (never); default `$MERGEZOO_KERNELS` or auto.
    - `max_shard_size`: the largest output shard ("2GB", or bytes).
    - `overwrite`: replace an existing output folder (otherwise `OutputExistsError`).
    - `progress`: show a progress bar.
    - `allow_pickle`: accept .bin/.pt checkpoints (loaded with `torch.load(weights_only=True)`).
    """

    device: str = "auto"
    kernels: str = field(default_factory=default_kernel_mode)
    max_shard_size: str | int = "2GB"
    overwrite: bool = False
    progress: bool = True
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        mode = str(self.kernels).strip().lower()
        if mode not in KERNEL_MODES:
            raise ConfigurationError(f"kernels={self.kernels!r} is not one of "
                                     f"{', '.join(KERNEL_MODES)}")
        object.__setattr__(self, "kernels", mode)

    @classmethod
    def of(cls, options: "MergeOptions | None" = None, **fields) -> "MergeOptions":
        """`options` (default: `MergeOptions()`) with `fields` replaced: the convenience
        functions accept the options as an object, as keywords, or both."""
        if options is None:
            return cls(**fields)
        return dataclasses.replace(options, **fields) if fields else options
