"""What a merge costs: wall time and peak memory of the file-based merge, FLOPs of the
hyperparameter search (one evaluation of held-in validation data per grid point and seed).

Example:
    >>> cost = measure_merge("ties", {"density": 0.2}, base_dir, expert_dirs, "out/ties")  # doctest: +SKIP
    >>> sorted(cost)
    ['merge_seconds', 'peak_bytes']
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence


class PeakMemory:
    """Samples this process's resident memory every few milliseconds while in the block;
    `peak_bytes` is the highest reading above the reading on entry."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss - self._start)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        import psutil

        self._start = psutil.Process().memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure_merge(method: str, params: dict[str, Any], base: Path, experts: Sequence[Path],
                  out_dir: Path, *, keep: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Merge `experts` on `base` with the file-based engine (as `mergezoo merge` does) into
    `out_dir` (a temporary folder when not `keep`), timing it and sampling its memory."""
    from mergezoo.merge import merge_models

    scratch = None if keep else Path(tempfile.mkdtemp(prefix="mergezoo-cost-"))
    target = out_dir if keep else scratch / "merged"
    try:
        with PeakMemory() as memory:
            start = time.perf_counter()
            merge_models(method, [str(e) for e in experts], base=str(base), out_dir=target,
                         params=params, device=device, overwrite=True, progress=False)
            seconds = time.perf_counter() - start
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"merge_seconds": round(seconds, 4), "peak_bytes": int(memory.peak_bytes)}


def flops_per_evaluation(context: Any, cells: Sequence[str], store: Any) -> float | None:
    """FLOPs of scoring one model on `cells`' validation data, counted once with torch's
    FlopCounterMode on the base model (and kept in `store`)."""
    key = "flops|validation|" + ",".join(cells)
    if key not in store:
        from torch.utils.flop_counter import FlopCounterMode

        bench = context.benchmark
        model = context.template()
        counter = FlopCounterMode(display=False)
        try:
            with counter:
                bench.score_cells(model, "validation", list(cells))
            flops = float(counter.get_total_flops())
        except (RuntimeError, NotImplementedError, TypeError) as err:
            # an operation FlopCounterMode cannot follow: FLOPs are reported as unknown
            logging.getLogger(__name__).warning("FLOPs not counted: %s", err)
            flops = None
        store.put(key, flops)
    return store.get(key)
