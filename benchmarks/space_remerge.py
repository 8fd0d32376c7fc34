"""Time a re-merge in the Space after a slider moves, on the built-in benchmark zoos.

For each zoo: build (or reuse) it, warm the playground (models loaded, task vectors computed
once), then merge with a sequence of slider values as a visitor would move them, and report
the median wall time of `Playground.merge` (the in-memory merge plus loading its weights into
a model in memory) per method.

    python benchmarks/space_remerge.py --size default --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from mergezoo.eval import build_zoo, get_benchmark
from mergezoo.spaces.playground import MergeSpec, Playground

MOVES = {  # (method, the slider that moves, its values)
    "task_arithmetic": ("lambda", [0.3, 0.5, 0.7, 0.9, 1.1]),
    "ties": ("density", [0.1, 0.2, 0.3, 0.4, 0.5]),
    "dare_ties": ("density", [0.3, 0.4, 0.5, 0.6, 0.7]),
    "breadcrumbs": ("gamma", [0.01, 0.02, 0.03, 0.04, 0.05]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="default")
    parser.add_argument("--benchmarks", default="digits-domains,digits-diffusion,text-styles")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name in args.benchmarks.split(","):
        bench = get_benchmark(name, size=args.size)
        pg = Playground.from_zoo(build_zoo(bench), bench)
        started = time.perf_counter()
        pg.warm()
        tv_seconds = time.perf_counter() - started
        n_params = sum(t.numel() for t in pg.task_vectors()[0]._shared.base.values())
        print(f"{pg.name}: {len(pg.experts)} experts, {n_params / 1e6:.2f} M float parameters "
              f"per model; warm-up (load models, task vectors) {tv_seconds:.1f} s")
        for method, (slider, values) in MOVES.items():
            times, merge_only = [], []
            for _ in range(args.repeat):
                for v in values:
                    out = pg.merge(MergeSpec(pg.expert_labels, method, {slider: v}))
                    times.append(out.seconds)
                    merge_only.append(out.merge_seconds)
            print(f"  {method:16s} moving {slider}: median {statistics.median(times):.3f} s "
                  f"(max {max(times):.3f} s; merge alone {statistics.median(merge_only):.3f} s) "
                  f"over {len(times)} merges")


if __name__ == "__main__":
    main()
