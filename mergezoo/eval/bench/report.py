"""A bench run's outputs for people: results.md (the table read first, with a legend, the
checks of the benchmark's regime and the paper's findings) and PNG plots (held-in vs held-out,
scaling curves, score vs compute); results.json beside them. Every file is written atomically.

Example:
    >>> write_outputs(results, Path("bench-out"))                          # doctest: +SKIP
    >>> sorted(p.name for p in Path("bench-out").iterdir())
    ['.bench', 'models', 'plots', 'results.json', 'results.md']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LEGEND = """\
- **held-in**: mean test score over the held-in cells (the cells the experts were trained on);
  **held-out**: mean over the held-out cells (combinations no expert saw).
- **norm.**: normalised score, per cell (score - base) / (reference - base), averaged: 1 is as
  good as the reference, 0 no better than the base. Held-in reference: the cell's own expert
  (same seed); held-out reference: the cell's oracle (trained on that cell). Cells whose
  reference beats the base by less than {min_gap} are left out{excluded}.
- **vs MT**: (score - base) / (multitask - base) on the held-in / held-out means ("-" where
  the multitask model does not beat the base by {min_gap}).
- **[a, b]**: 95% confidence interval (Student t) over expert seeds {seeds}.
- Baselines: **base** the pretrained model; **experts** each held-in cell by its own expert
  and each held-out cell by its closest expert (same {first_factor}); **expert:CELL** one expert
  alone on every cell; **multitask** one model trained on all held-in data; **oracle** one
  model per held-out cell, trained on it (held-out only); **ensemble** the experts' outputs
  averaged (N forward passes); **greedy_soup** experts added best-first to a uniform average
  while held-in validation does not drop.
- Merges: hyperparameters tuned on held-in **validation** data only (the grid and its best
  point are in results.json); held-out cells and test data are read once, for this table.
"""


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _hp(row: dict[str, Any]) -> str:
    hp = row.get("hyperparameters") or {}
    text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())
    if row.get("tuning", {}).get("best_at_edge"):
        text += " (edge of grid)"
    return text or "-"


def markdown(results: dict[str, Any]) -> str:
    """results.md: the summary table, legend, checks, findings, per-cell and scaling tables."""
    first_factor = next(iter(results["cells"][0]["factors"])) if results["cells"] else "factor"
    excluded = results["normalisation"]["excluded"]
    lines = [f"# {results['benchmark']} (size {results['size']}): merging methods compared",
             "", f"Metric: {results['metric']} on the test split; seeds {results['seeds']}; "
             f"{len([c for c in results['cells'] if c['held_in']])} held-in and "
             f"{len([c for c in results['cells'] if not c['held_in']])} held-out cells.", "",
             "| model | kind | held-in | held-out | held-in norm. | held-out norm. | vs MT in/out "
             "| hyperparameters | tuning evals | merge s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in [r for r in results["rows"] if r["kind"] in ("baseline", "merge")]:
        cost = row.get("cost") or {}
        lines.append(
            f"| {row['method']} | {row['kind']} | {_fmt(row['held_in'])}{_ci(row['held_in_ci'])} "
            f"| {_fmt(row['held_out'])}{_ci(row['held_out_ci'])} "
            f"| {_fmt(row['held_in_normalised'])} | {_fmt(row['held_out_normalised'])} "
            f"| {_fmt(row['held_in_vs_multitask'], 2)} / {_fmt(row['held_out_vs_multitask'], 2)} "
            f"| {_hp(row) if row['kind'] == 'merge' else '-'} "
            f"| {cost.get('tuning_evals', '-')} | {_fmt(cost.get('merge_seconds'), 2)} |")
    lines += ["", "## Legend", "", LEGEND.format(
        min_gap=results["normalisation"]["min_gap"], seeds=results["seeds"],
        first_factor=first_factor,
        excluded=f" (here: {', '.join(excluded)})" if excluded else " (here: none)")]
    lines += ["## Is this benchmark in the paper's regime?", "", "| check | measured | passed |",
              "|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']} | {'yes' if c['passed'] else 'NO'} |"
              for c in results["checks"]]
    lines += ["", "## The paper's findings, on this run", "",
              "| finding (Tam et al., 2024) | measured | reproduced |", "|---|---|---|"]
    lines += [f"| {f['finding']} | {f['measured']} | "
              f"{'n/a' if f['reproduced'] is None else ('yes' if f['reproduced'] else 'no')} |"
              for f in results["findings"]]
    merges = [r for r in results["rows"] if r["kind"] == "merge"]
    shown = [r for r in results["rows"] if r["kind"] == "baseline"
             and r["method"] in ("base", "experts", "multitask", "oracle", "ensemble")] + merges
    lines += ["", "## Per cell (test, mean over seeds)", "",
              "| cell | " + " | ".join(r["method"] for r in shown) + " |",
              "|---|" + "---|" * len(shown)]
    for cell in results["cells"]:
        mark = " (held-in)" if cell["held_in"] else ""
        lines.append(f"| {cell['name']}{mark} | " + " | ".join(
            _fmt(r["per_cell"].get(cell["name"])) for r in shown) + " |")
    scaling = [r for r in results["rows"] if r["kind"] == "scaling"]
    if scaling:
        lines += ["", f"## Scaling (first n experts of {results['orderings']} seeded orderings; "
                  "held-in: the merged experts' own cells)", "",
                  "| method | n | held-in (± std) | held-out (± std) |", "|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['n_models']} | {_fmt(r['held_in'])} ± "
                  f"{_fmt(r['held_in_std'])} | {_fmt(r['held_out'])} ± {_fmt(r['held_out_std'])} |"
                  for r in scaling]
    corr = results["correlation"]
    lines += ["", f"Held-in vs held-out across the {corr['n']} methods: Spearman rho "
              f"{_fmt(corr['rho'])}, p = {_fmt(corr['p_value'])}.", ""]
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in
                                     results["plots"].items()] + [""]
    if results.get("wall_seconds") is not None:
        lines += [f"Bench wall time: {results['wall_seconds']:.0f} s (zoo build excluded when "
                  "it was cached).", ""]
    return "\n".join(lines)


def plots(results: dict[str, Any], folder: Path) -> dict[str, str]:
    """held-in vs held-out scatter, scaling curves and score vs compute, as PNG files in
    `folder`; returns {name: path relative to the results folder}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    merges = [r for r in results["rows"] if r["kind"] == "merge"]
    baselines = [r for r in results["rows"] if r["kind"] == "baseline"
                 and r["method"] in ("base", "experts", "multitask", "ensemble", "greedy_soup")
                 and r["held_in"] is not None and r["held_out"] is not None]

    def save(fig: Any, name: str) -> None:
        path = folder / f"{name}.png"
        tmp = folder / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        out[name] = f"{folder.name}/{name}.png"

    fig, ax = plt.subplots(figsize=(6, 5))
    for r in merges:
        xerr = [[r["held_in"] - r["held_in_ci"][0]], [r["held_in_ci"][1] - r["held_in"]]] \
            if r["held_in_ci"] else None
        yerr = [[r["held_out"] - r["held_out_ci"][0]], [r["held_out_ci"][1] - r["held_out"]]] \
            if r["held_out_ci"] else None
        ax.errorbar(r["held_in"], r["held_out"], xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        ax.annotate(r["method"], (r["held_in"], r["held_out"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    for r in baselines:
        ax.scatter(r["held_in"], r["held_out"], marker="s", color="grey")
        ax.annotate(r["method"], (r["held_in"], r["held_out"]), fontsize=8, color="grey",
                    xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("held-in test score")
    ax.set_ylabel("held-out test score")
    ax.set_title(f"{results['benchmark']}: held-in vs held-out (95% CI over seeds)")
    save(fig, "held_in_vs_held_out")

    scaling = [r for r in results["rows"] if r["kind"] == "scaling"]
    if scaling:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
        for method in sorted({r["method"] for r in scaling}):
            pts = sorted((r for r in scaling if r["method"] == method), key=lambda r: r["n_models"])
            for ax, key in zip(axes, ("held_in", "held_out")):
                ns = [p["n_models"] for p in pts]
                ys = [p[key] for p in pts]
                sd = [p[f"{key}_std"] or 0.0 for p in pts]
                ax.plot(ns, ys, marker="o", label=method)
                ax.fill_between(ns, [y - s for y, s in zip(ys, sd)],
                                [y + s for y, s in zip(ys, sd)], alpha=0.1)
        for ax, key in zip(axes, ("held-in", "held-out")):
            ax.set_xlabel("number of merged experts")
            ax.set_ylabel(f"{key} test score")
        axes[1].legend(fontsize=7)
        fig.suptitle(f"{results['benchmark']}: scaling (mean ± std over orderings)")
        save(fig, "scaling")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in merges:
        flops = (r.get("cost") or {}).get("flops")
        if flops:
            ax.scatter(flops, r["held_in"], color="C0")
            ax.scatter(flops, r["held_out"], color="C1", marker="^")
            ax.annotate(r["method"], (flops, r["held_in"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs of the hyperparameter search (evaluations on held-in validation)")
    ax.set_ylabel("test score (o held-in, ^ held-out)")
    ax.set_title(f"{results['benchmark']}: score vs compute")
    save(fig, "score_vs_compute")
    return out


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Write plots, results.json and results.md into `out` (results.json last but one: a
    folder with results.json holds a complete run)."""
    results["plots"] = plots(results, out / "plots")
    _atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    _atomic_write(out / "results.md", markdown(results))
