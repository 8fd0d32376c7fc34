"""Helpers shared by the built-in benchmarks' trainers: determinism and recipes.

Example:
    >>> with deterministic(seed=3) as gen:                                 # doctest: +SKIP
    ...     order = torch.randperm(100, generator=gen)
    >>> TrainRecipe(lr=1e-3, epochs=5, batch_size=32, seed=0).to_dict()["lr"]
    0.001
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator


@dataclass(frozen=True)
class TrainRecipe:
    """How a zoo model was trained; written verbatim into its model card."""

    lr: float
    epochs: int
    batch_size: int
    seed: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    frozen: tuple[str, ...] = ()          # parameter-name prefixes kept frozen
    trained_on: tuple[str, ...] = ()      # cell names
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frozen"] = list(self.frozen)
        out["trained_on"] = list(self.trained_on)
        extra = out.pop("extra")
        out.update(extra)
        return out


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on `threads` torch threads (None: leave as is), then restore the count.
    Tiny models run far faster on one thread, above all on a busy machine."""
    import torch

    if threads is None:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' and datasets' progress bars (a zoo build loads and saves dozens of
    small models and datasets); restore them after."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_was = hf_logging.is_progress_bar_enabled()
    ds_was = datasets.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hf_was:
            hf_logging.enable_progress_bar()
        if ds_was:
            datasets.enable_progress_bars()


@contextmanager
def deterministic(seed: int, threads: int = 1) -> Iterator[Any]:
    """Seed python, numpy and torch, use deterministic torch kernels on `threads` threads, and
    yield a seeded `torch.Generator`; restore the thread count and determinism flag after."""
    import numpy as np
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
