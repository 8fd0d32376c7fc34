"""results.json of a bench run: rows for every merge, baseline and scaling point, with means
and 95% confidence intervals over expert seeds, normalised scores, costs, the held-in /
held-out correlation across methods, and the paper's qualitative findings checked.

Normalised scores (per seed, then averaged): held-in = mean over held-in cells of
(score - base) / (own expert - base); held-out = the same against each held-out cell's oracle;
cells whose reference beats the base by less than the benchmark's `min_normalising_gap` are
left out (listed in `normalisation.excluded`). Against the multitask model: (mean - base mean) / (multitask mean
- base mean), on held-in and held-out averages.
"""

from __future__ import annotations

import platform
from typing import Any, Sequence

from mergezoo.eval.bench import stats

SCHEMA_VERSION = 1


def closest_experts(bench: Any) -> dict[str, str]:
    """For each held-out cell, the held-in cell whose expert is "closest": same value of the
    first factor (the category / task), else of any factor, else none."""
    held_in = bench.held_in_cells
    first = next(iter(bench.factors))
    out = {}
    for cell in bench.held_out_cells:
        same = [h for h in held_in if h.factors[first] == cell.factors[first]] or \
            [h for h in held_in if any(h.factors[f] == v for f, v in cell.factors.items())]
        if same:
            out[cell.name] = same[0].name
    return out


class _Rows:
    """Turns per-seed {cell: score} dicts into results.json rows."""

    def __init__(self, run: Any, baselines: dict[str, Any]) -> None:
        self.run = run
        self.base = baselines["base"]
        self.oracle = baselines["oracle"]
        self.own = {s: {c: experts[i][c] for i, c in enumerate(run.held_in)}
                    for s, experts in baselines["experts"].items()}
        mt = baselines["multitask"]
        self.multitask = ({k: stats.mean_ci([self._mean(m, k) for m in mt])[0]
                           for k in ("held_in", "held_out")} if mt else {})
        self.excluded: set[str] = set()
        self.min_gap = float(run.bench.min_normalising_gap)

    def _mean(self, scores: dict[str, float], which: str) -> float | None:
        cells = [c for c in getattr(self.run, which) if c in scores]
        return sum(scores[c] for c in cells) / len(cells) if cells else None

    def row(self, kind: str, method: str, per_seed: Sequence[dict[str, float]],
            seeds: Sequence[int | None], **extra: Any) -> dict[str, Any]:
        held_in = [self._mean(s, "held_in") for s in per_seed]
        held_out = [self._mean(s, "held_out") for s in per_seed]
        norm_in, norm_out = [], []
        for scores, seed in zip(per_seed, seeds):
            own = self.own.get(seed) or self.own[self.run.seeds[0]]
            value, excluded = stats.normalised(scores, self.base, own,
                                               [c for c in self.run.held_in if c in scores],
                                               self.min_gap)
            norm_in.append(value)
            self.excluded.update(excluded)
            value, excluded = stats.normalised(scores, self.base, self.oracle,
                                               [c for c in self.run.held_out if c in scores],
                                               self.min_gap)
            norm_out.append(value)
            self.excluded.update(excluded)
        row: dict[str, Any] = {"kind": kind, "method": method}
        for name, values in (("held_in", held_in), ("held_out", held_out),
                             ("held_in_normalised", norm_in), ("held_out_normalised", norm_out)):
            mean, ci = stats.mean_ci([v for v in values if v is not None])
            row[name] = _round(mean)
            row[f"{name}_ci"] = [_round(ci[0]), _round(ci[1])] if ci else None
        base_in, base_out = self._mean(self.base, "held_in"), self._mean(self.base, "held_out")
        row["held_in_vs_multitask"] = _round(stats.ratio_of_means(
            row["held_in"], base_in, self.multitask.get("held_in"), self.min_gap))
        row["held_out_vs_multitask"] = _round(stats.ratio_of_means(
            row["held_out"], base_out, self.multitask.get("held_out"), self.min_gap))
        cells = sorted({c for s in per_seed for c in s}, key=self.run.cells.index)
        row["per_cell"] = {c: _round(stats.mean_ci([s[c] for s in per_seed if c in s])[0])
                           for c in cells}
        row["per_seed"] = [{"seed": seed, "held_in": _round(a), "held_out": _round(b)}
                           for seed, a, b in zip(seeds, held_in, held_out)]
        row.update(extra)
        return row


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def assemble(run: Any, methods: list[Any], baselines: dict[str, Any], tuned: dict[str, Any],
             tested: dict[str, Any], scaling: dict[str, Any], costs: dict[str, Any],
             zoo: Any) -> dict[str, Any]:
    """Everything the bench measured, as the results.json document."""
    import torch

    from mergezoo import __version__

    bench, seeds = run.bench, run.seeds
    rows = _Rows(run, baselines)
    out: list[dict[str, Any]] = []
    # -- baselines
    out.append(rows.row("baseline", "base", [baselines["base"]], [None], n_models=1))
    closest = closest_experts(bench)
    experts_combined = []
    for s in seeds:
        scores = {c: baselines["experts"][s][i][c] for i, c in enumerate(run.held_in)}
        scores.update({c: baselines["experts"][s][run.held_in.index(e)][c]
                       for c, e in closest.items()})
        experts_combined.append(scores)
    out.append(rows.row("baseline", "experts", experts_combined, seeds, n_models=1,
                        description="each held-in cell by its own expert, each held-out cell "
                                    "by its closest expert"))
    for i, cell in enumerate(run.held_in):
        out.append(rows.row("baseline", f"expert:{cell}",
                            [baselines["experts"][s][i] for s in seeds], seeds, n_models=1))
    if baselines["multitask"]:
        out.append(rows.row("baseline", "multitask", baselines["multitask"],
                            [None] * len(baselines["multitask"]), n_models=1))
    if baselines["oracle"]:
        out.append(rows.row("baseline", "oracle", [baselines["oracle"]], [None], n_models=1))
    if baselines["ensemble"]:
        out.append(rows.row("baseline", "ensemble", [baselines["ensemble"][s] for s in seeds],
                            seeds, n_models=run.n_experts))
    soups = baselines["greedy_soup"]
    out.append(rows.row("baseline", "greedy_soup", [soups[s]["scores"] for s in seeds], seeds,
                        n_models=None, soups={str(s): [run.held_in[i] for i in soups[s]["experts"]]
                                              for s in seeds}))
    # -- merges
    for method in methods:
        t = tuned[method.name]
        out.append(rows.row(
            "merge", method.name, [tested[method.name][s] for s in seeds], seeds,
            n_models=run.n_experts, hyperparameters=dict(t["best"]),
            tuning={"validation": _round(t["validation"]), "grid": t["grid"],
                    "best_at_edge": t["best_at_edge"]},
            cost=costs[method.name], requires=method.needs.describe(), paper=method.paper))
    # -- scaling
    for name, points in scaling.items():
        for n in sorted({p["n_models"] for p in points}):
            sel = [p for p in points if p["n_models"] == n]
            row = {"kind": "scaling", "method": name, "n_models": n, "points": len(sel)}
            for key in ("held_in", "held_out"):
                mean, ci = stats.mean_ci([p[key] for p in sel])
                row[key], row[f"{key}_ci"] = _round(mean), ([_round(ci[0]), _round(ci[1])]
                                                          if ci else None)
                row[f"{key}_std"] = _round(stats.spread([p[key] for p in sel]))
            out.append(row)
    merges = [r for r in out if r["kind"] == "merge"]
    rho, p = stats.spearman([r["held_in"] for r in merges], [r["held_out"] for r in merges])
    results = {
        "schema_version": SCHEMA_VERSION, "benchmark": bench.name, "size": bench.size,
        "task": bench.spec.task, "metric": bench.spec.metric, "seeds": list(seeds),
        "complete": True,
        "cells": [{"name": c.name, "held_in": c.held_in, "factors": dict(c.factors)}
                  for c in bench.cells],
        "closest_expert": closest,
        "zoo": {"path": str(zoo.root), "definition_hash": zoo.definition_hash},
        "normalisation": {"min_gap": rows.min_gap, "excluded": sorted(rows.excluded)},
        "rows": out,
        "correlation": {"method": "spearman", "over": "merge rows", "rho": _round(rho),
                        "p_value": _round(p), "n": len(merges)},
        "orderings": run.config.orderings if run.config.scaling else 0,
        "environment": {"mergezoo": __version__, "torch": torch.__version__,
                        "python": platform.python_version(), "device": run.config.device},
    }
    results["checks"] = checks(results)
    results["findings"] = findings(results)
    return results


def _rows(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in results["rows"] if r["kind"] == kind]


def _row(results: dict[str, Any], method: str) -> dict[str, Any] | None:
    return next((r for r in results["rows"] if r["kind"] == "baseline" and r["method"] == method),
                None)


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark's regime, checked (DESIGN.md: a benchmark where merging loses to the base
    measures a broken setup): merging works in distribution, methods are distinguishable,
    the experts beat the base on their own cells."""
    merges = _rows(results, "merge")
    base, experts = _row(results, "base"), _row(results, "experts")
    min_gap = results["normalisation"]["min_gap"]
    best = max(merges, key=lambda r: r["held_in_normalised"] or -1e9, default=None)
    out = []
    if best is not None:
        value = best["held_in_normalised"]
        out.append({"check": "the best tuned data-free merge closes at least half of the "
                             "base-to-expert gap on held-in cells",
                    "value": f"{best['method']}: normalised held-in {value}",
                    "passed": value is not None and value >= 0.5})
    apart = []
    for key in ("held_in", "held_out"):
        for i, a in enumerate(merges):
            for b in merges[i + 1:]:
                ca, cb = a.get(f"{key}_ci"), b.get(f"{key}_ci")
                if ca and cb and (ca[0] > cb[1] or cb[0] > ca[1]):
                    apart.append(f"{a['method']} / {b['method']} ({key.replace('_', '-')})")
    out.append({"check": "at least two data-free methods differ by more than their 95% CIs",
                "value": f"{len(apart)} pairs" + (f", e.g. {apart[0]}" if apart else ""),
                "passed": bool(apart)})
    if base and experts:
        gaps = {c: experts["per_cell"][c] - base["per_cell"][c]
                for c in experts["per_cell"] if c in base["per_cell"] and
                any(x["name"] == c and x["held_in"] for x in results["cells"])}
        smallest = min(gaps.items(), key=lambda kv: kv[1]) if gaps else None
        out.append({"check": "the experts are clearly better than the base on their own cells "
                             f"(every gap >= {min_gap})",
                    "value": (f"held-in {base['held_in']} -> {experts['held_in']}; smallest "
                              f"gap {smallest[0]} {smallest[1]:+.3f}") if smallest else "n/a",
                    "passed": bool(gaps) and smallest[1] >= min_gap})
    return out


def findings(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's qualitative findings and whether this run reproduces each, with numbers."""
    task = results["task"]
    generation = "generation" in task
    vision = task.startswith("image") or "image" in task
    out = []
    corr = results["correlation"]
    expected = "positive" if vision else "negative"
    rho = corr["rho"]
    out.append({
        "finding": ("vision and generation: held-in and held-out scores of merging methods "
                    "correlate positively" if vision else
                    "NLP: held-in and held-out scores of merging methods are anti-correlated"),
        "measured": (f"Spearman rho {rho} (p = {corr['p_value']}, {corr['n']} methods)"
                     if rho is not None else f"undefined ({corr['n']} methods)"),
        "reproduced": None if rho is None else (rho > 0) == (expected == "positive")})
    scaling = _rows(results, "scaling")
    if scaling:
        fewer_in = more_out = 0
        methods = sorted({r["method"] for r in scaling})
        for m in methods:
            pts = sorted((r for r in scaling if r["method"] == m), key=lambda r: r["n_models"])
            if len(pts) < 2:
                continue
            fewer_in += pts[-1]["held_in"] < pts[0]["held_in"]
            more_out += pts[-1]["held_out"] > pts[0]["held_out"]
        n_lo = min(r["n_models"] for r in scaling)
        n_hi = max(r["n_models"] for r in scaling)
        out.append({
            "finding": "more merged models: lower held-in, higher held-out",
            "measured": (f"from n={n_lo} to n={n_hi}: held-in fell for {fewer_in} of "
                         f"{len(methods)} methods, held-out rose for {more_out} of {len(methods)}"),
            "reproduced": fewer_in * 2 > len(methods) and more_out * 2 > len(methods)})
    multitask = _row(results, "multitask")
    if multitask is not None:
        merges = _rows(results, "merge")
        beat = [r["method"] for r in merges if r["held_out"] is not None
                and multitask["held_out"] is not None and r["held_out"] > multitask["held_out"]]
        out.append({
            "finding": "generation: several merging methods beat the multitask model"
                       + ("" if generation else " (a generation finding; shown for reference)"),
            "measured": (f"{len(beat)} of {len(merges)} methods beat multitask held-out "
                         f"({multitask['held_out']})" + (f": {', '.join(beat)}" if beat else "")),
            "reproduced": (len(beat) >= 2) if generation else None})
    return out
