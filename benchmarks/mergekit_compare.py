#!/usr/bin/env python
"""mergezoo against mergekit 0.1.5, whole process, on the same recipes (issue 12; not a test).

Builds (or reuses, under --workdir/models, with `merge_speed.build_models`) a Llama-like bf16
model and N perturbed experts: each expert is the base plus independent Gaussian noise, so the
task vectors disagree in sign on about half of the entries, and being bf16 they have many
entries of equal magnitude (ties at any top-k cut). For every method that both tools have, at
each N, it writes ONE mergekit-style recipe (`dtype: float32` compute, `out_dtype: bfloat16`)
and runs it with both tools, each as a whole process in a fresh subprocess:

    mergekit:  <venv>/bin/mergekit-yaml RECIPE OUT --lazy-unpickle --out-shard-size 1B
                   --no-copy-tokenizer --quiet --random-seed 0
    mergezoo:  python -m mergezoo.cli merge RECIPE --out OUT --overwrite --quiet
               (from the repository root; --kernels auto, the default)

Wall time is the process's (start-up and imports included: what a user waits for); CPU time
(user + system) comes from wait4()'s rusage; peak RSS (VmHWM, which counts pages of the
memory-mapped inputs) and peak anonymous memory (RssAnon, the memory the process really
holds) are sampled from /proc/<pid>/status every 50 ms. The
two tools alternate which runs first from one method to the next and from one repeat to the
next, so that they share the machine's noise; the inputs are read once per N to warm the page
cache, and os.sync() runs (untimed) between runs. The median of --repeat runs is reported.

The outputs of the first repeat are compared tensor by tensor (max |a - b| in float32 of the
bf16 outputs, how many entries and tensors differ). DARE and DELLA draw random masks: the two
tools' draws differ by design (mergezoo hashes (seed, tensor, model, entry); mergekit uses
torch's generator), so their diffs are reported but are not an agreement check. TIES,
Breadcrumbs(-TIES) and DELLA rank magnitudes: mergekit breaks ties at the cut with a
non-stable argsort, mergezoo by position, so entries of equal magnitude at the cut can differ.

mergekit's options are those a user after speed on a CPU would take: `--lazy-unpickle` (lower
memory; the inputs are safetensors, so it changes little), `--out-shard-size 1B` (1B
parameters = 2 GB of bf16, mergezoo's default 2 GB shard; one shard either way here),
`--no-copy-tokenizer` (the synthetic models have none), `--quiet` (no progress bar, as
mergezoo's --quiet). Threads: both use torch's default (one per core). `--cuda` is not used
(no GPU). HF_HUB_OFFLINE=1 for both (local folders only).

Installing mergekit 0.1.5 (what worked on 2026-12-06, Python 3.11, CPU torch 2.13.0 already
installed; mergekit 0.1.5 pins transformers >=5,<6, which the installed transformers 5.25
meets, so nothing of the project's is replaced):

    python -m venv --system-site-packages /work/venvs/mergekit
    /work/venvs/mergekit/bin/pip install mergekit==0.1.5
    # adds only immutables, protobuf, sentencepiece, setuptools; reuses the CPU torch

Usage:
    python benchmarks/mergekit_compare.py --json bench-out/mergekit_compare.json
    python benchmarks/mergekit_compare.py --n 2 --methods ties,model_stock --repeat 3
    python benchmarks/mergekit_compare.py --mergekit /path/to/venv/bin/mergekit-yaml ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # merge_speed's model builder; the worktree's mergezoo

import merge_speed as ms  # noqa: E402

DEFAULT_MERGEKIT = os.environ.get("MERGEKIT_YAML", "/work/venvs/mergekit/bin/mergekit-yaml")
MERGEKIT_FLAGS = ["--lazy-unpickle", "--out-shard-size", "1B", "--no-copy-tokenizer", "--quiet",
                  "--random-seed", "0"]
MB = 1e6

# name -> recipe pieces: mergekit method name (mergezoo reads the same recipe), whether the
# recipe names a base model, per-model parameters, shared parameters, allowed N, and what the
# output comparison can show ("exact": the same tensors up to float rounding are expected;
# "ties": equal magnitudes at a top-k cut may be kept by one tool and not the other;
# "random": random masks, drawn differently by design).
METHODS: dict[str, dict] = {
    "linear": {"base": False, "model": {"weight": 1.0}, "shared": {}, "check": "exact"},
    "task_arithmetic": {"base": True, "model": {"weight": 1.0}, "shared": {"lambda": 1.0},
                        "check": "exact"},
    "ties": {"base": True, "model": {"weight": 1.0, "density": 0.2}, "shared": {"lambda": 1.0},
             "check": "ties", "cut": "top"},
    "dare_ties": {"base": True, "model": {"weight": 1.0, "density": 0.5},
                  "shared": {"lambda": 1.0}, "check": "random"},
    "dare_linear": {"base": True, "model": {"weight": 1.0, "density": 0.5},
                    "shared": {"lambda": 1.0}, "check": "random"},
    "breadcrumbs": {"base": True, "model": {"weight": 1.0, "density": 0.9, "gamma": 0.01},
                    "shared": {"lambda": 1.0}, "check": "ties", "cut": "band"},
    "breadcrumbs_ties": {"base": True, "model": {"weight": 1.0, "density": 0.9, "gamma": 0.01},
                         "shared": {"lambda": 1.0}, "check": "ties", "cut": "band"},
    "della": {"base": True, "model": {"weight": 1.0, "density": 0.5, "epsilon": 0.15},
              "shared": {"lambda": 1.0}, "check": "random"},
    "della_linear": {"base": True, "model": {"weight": 1.0, "density": 0.5, "epsilon": 0.15},
                     "shared": {"lambda": 1.0}, "check": "random"},
    "model_stock": {"base": True, "model": {}, "shared": {}, "check": "exact"},
    # mergekit's slerp: the base is one of the two models (t = 0 gives it).
    "slerp": {"base": "first", "model": {}, "shared": {"t": 0.5}, "check": "exact", "n": {2}},
    "multislerp": {"base": True, "model": {"weight": 1.0}, "shared": {}, "check": "exact"},
    "karcher": {"base": False, "model": {}, "shared": {}, "check": "exact"},
}
DEFAULT_METHODS = list(METHODS)  # every method both have (slerp at N = 2 only)


def recipe_text(method: str, base: str, experts: list[str]) -> str:
    """One mergekit-style recipe that both tools read."""
    m = METHODS[method]
    lines = [f"merge_method: {method}"]
    models = list(experts)
    if m["base"] == "first":
        lines.append(f"base_model: {experts[0]}")
    elif m["base"]:
        lines.append(f"base_model: {base}")
    lines.append("models:")
    for path in models:
        lines.append(f"  - model: {path}")
        if m["model"]:
            lines.append(f"    parameters: {json.dumps(m['model'])}")
    if m["shared"]:
        lines.append(f"parameters: {json.dumps(m['shared'])}")
    lines += ["dtype: float32", "out_dtype: bfloat16"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- one process

def run_process(cmd: list[str], env: dict, cwd: Path, sample_s: float = 0.05) -> dict:
    """Run `cmd` to completion; wall time, rusage CPU and max RSS, sampled peak RssAnon."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak_anon = peak_rss = 0
    # wait4 gives this child's own CPU seconds. Not its ru_maxrss: Linux carries the RSS
    # high-water mark of the mm that exec() replaced (this parent's, with subprocess's vfork)
    # into it. VmHWM of the child's own mm is sampled instead (it only grows, so the last
    # sample misses at most the final 50 ms). The pipe is drained after the child ends, so a
    # chatty child could block on a full pipe: both tools run quiet.
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        st = ms._proc_status(proc.pid)
        peak_anon = max(peak_anon, st.get("RssAnon", 0))
        peak_rss = max(peak_rss, st.get("VmHWM", 0), st.get("VmRSS", 0))
        time.sleep(sample_s)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = proc.stdout.read()
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}):\n{output[-3000:]}")
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss": peak_rss, "peak_anon": peak_anon,
            "loadavg_before": load0, "loadavg_after": os.getloadavg()[0]}


# --------------------------------------------------------------------------- comparison

def tied_at_cut(taus: list, kind: str, density: float, gamma: float):
    """Entries where some task vector's magnitude equals a cut value that ties span, i.e.
    where keeping or dropping depends on how ties are broken. mergekit 0.1.5's cuts:
    "top" (TIES, `sparsify.magnitude`) keeps the max(1, int(density n)) largest; "band"
    (Breadcrumbs, `magnitude_outliers`) keeps int(density n) entries after dropping the
    max(0, n - int(density n) - int(gamma n)) smallest."""
    import torch
    amb = torch.zeros(taus[0].numel(), dtype=torch.bool)
    for tau in taus:
        w = tau.abs().reshape(-1)
        n = w.numel()
        s = torch.sort(w).values  # ascending
        if kind == "top":
            k = max(1, int(density * n))
            if k < n and s[n - k - 1] == s[n - k]:
                amb |= w == s[n - k]
        else:
            keep, top = int(density * n), int(gamma * n)
            bot = max(0, n - keep - top)
            if 0 < bot < n and s[bot - 1] == s[bot]:
                amb |= w == s[bot]
            if 0 < keep and bot + keep < n and s[bot + keep - 1] == s[bot + keep]:
                amb |= w == s[bot + keep - 1]
    return amb


def open_all(folder: Path) -> dict:
    """Tensor name -> safe_open handle, over every safetensors shard of a folder."""
    from safetensors import safe_open
    handles = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        h = safe_open(str(f), framework="pt", device="cpu")
        handles.update({k: h for k in h.keys()})
    return handles


def compare_outputs(ref_dir: Path, out_dir: Path, cut: dict | None = None) -> dict:
    """Tensor-by-tensor comparison of two folders of safetensors shards. With `cut` (kind,
    density, gamma, base, experts), also count the differing entries that no tie at a
    magnitude cut explains (see `tied_at_cut`)."""
    import torch

    a, b = open_all(ref_dir), open_all(out_dir)
    if cut:
        base, experts = open_all(cut["base"]), [open_all(e) for e in cut["experts"]]
    res = {"only_mergekit": sorted(set(a) - set(b)), "only_mergezoo": sorted(set(b) - set(a)),
           "tensors": 0, "identical_tensors": 0, "entries": 0, "differing_entries": 0,
           "max_abs_diff": 0.0, "max_abs_diff_tensor": None, "max_rel_diff": 0.0,
           "dtype_mismatch": []}
    if cut:
        res.update(differing_outside_ties=0, max_abs_diff_outside_ties=0.0)
    for key in sorted(set(a) & set(b)):
        x, y = a[key].get_tensor(key), b[key].get_tensor(key)
        if x.dtype != y.dtype:
            res["dtype_mismatch"].append(key)
        if x.shape != y.shape:
            raise RuntimeError(f"{key}: shape {tuple(x.shape)} (mergekit) vs {tuple(y.shape)}")
        x, y = x.float(), y.float()
        d = (x - y).abs()
        worst = d.max().item() if d.numel() else 0.0
        res["tensors"] += 1
        res["entries"] += d.numel()
        ndiff = int(torch.count_nonzero(d).item())
        res["differing_entries"] += ndiff
        res["identical_tensors"] += ndiff == 0
        if cut and ndiff:
            b0 = base[key].get_tensor(key).float()
            taus = [e[key].get_tensor(key).float() - b0 for e in experts]
            away = (d.reshape(-1) > 0) & ~tied_at_cut(taus, cut["kind"], cut["density"],
                                                      cut["gamma"])
            res["differing_outside_ties"] += int(away.sum())
            if away.any():
                res["max_abs_diff_outside_ties"] = max(res["max_abs_diff_outside_ties"],
                                                       d.reshape(-1)[away].max().item())
        scale = x.abs().max().item()
        if scale > 0:
            res["max_rel_diff"] = max(res["max_rel_diff"], worst / scale)
        if worst > res["max_abs_diff"]:
            res["max_abs_diff"], res["max_abs_diff_tensor"] = worst, key
    return res


def agreement(method: str, cmp: dict | None) -> str:
    """A short verdict for the table (the JSON keeps the numbers)."""
    if cmp is None:
        return "not compared"
    if cmp["only_mergekit"] or cmp["only_mergezoo"]:
        return (f"key sets differ ({len(cmp['only_mergekit'])} only in mergekit, "
                f"{len(cmp['only_mergezoo'])} only in mergezoo)")
    kind = METHODS[method]["check"]
    frac = cmp["differing_entries"] / max(cmp["entries"], 1)
    if kind == "random":
        text = f"random draws differ by design ({frac:.0%} of entries differ)"
    elif cmp["differing_entries"] == 0:
        text = "identical"
    else:
        text = (f"{cmp['identical_tensors']}/{cmp['tensors']} tensors identical, "
                f"{frac:.3%} of entries differ, max diff {cmp['max_abs_diff']:.2g}")
        away = cmp.get("differing_outside_ties")
        if away == 0:
            text += ", all where a magnitude tie spans the cut"
        elif away is not None:
            text += (f"; {away} of them NOT at a tied cut (max diff "
                     f"{cmp['max_abs_diff_outside_ties']:.2g})")
    if cmp["dtype_mismatch"]:
        text += f"; dtypes differ on {len(cmp['dtype_mismatch'])} tensors"
    return text


# --------------------------------------------------------------------------- reporting

def markdown(report: dict) -> str:
    m = report["model"]
    lines = [
        f"Model: {m['n_params'] / 1e6:.1f}M parameters, {m['n_tensors']} tensors, bf16 "
        f"({m['model_bytes'] / MB:.0f} MB); experts = base + Gaussian noise. "
        f"Recipes: dtype float32, out_dtype bfloat16.",
        f"Machine: {report['machine']['cpus']} CPUs ({report['machine']['cpu_model']}), "
        f"torch {report['machine']['torch']}; load average (1 min) {report['loadavg_start']:.2f}"
        f" at the start, {report['loadavg_end']:.2f} at the end; date {report['date']}.",
        f"Whole process, median of {report['repeat']} run(s), tools interleaved, inputs warm "
        f"in the page cache. Ratio = mergekit s / mergezoo s (above 1: mergezoo faster).",
        "",
        "| method | N | mergekit s | mergezoo s | ratio | CPU s mk / mz | peak RSS MB mk / mz "
        "| peak anon MB mk / mz | load | outputs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        mk, mz = row["mergekit"], row["mergezoo"]
        if mk is None or mz is None:
            mk_s = "failed" if mk is None else f"{mk['seconds']:.1f}"
            mz_s = "failed" if mz is None else f"{mz['seconds']:.1f}"
            lines.append(f"| {row['method']} | {row['n']} | {mk_s} | {mz_s} | - | - | - | - "
                         f"| - | {row.get('error', '')[:120]} |")
            continue
        lines.append(
            f"| {row['method']} | {row['n']} | {mk['seconds']:.1f} | {mz['seconds']:.1f} | "
            f"{mk['seconds'] / mz['seconds']:.1f}x | {mk['cpu_seconds']:.0f} / "
            f"{mz['cpu_seconds']:.0f} | {mk['peak_rss'] / MB:,.0f} / {mz['peak_rss'] / MB:,.0f} "
            f"| {mk['peak_anon'] / MB:,.0f} / {mz['peak_anon'] / MB:,.0f} | "
            f"{row['loadavg']:.1f} | {agreement(row['method'], row['compare'])} |")
    lines += ["", f"Whole benchmark: {report['total_seconds']:.0f} s."]
    return "\n".join(lines)


def median_run(runs: list[dict]) -> dict | None:
    if not runs:
        return None
    keys = ("seconds", "cpu_seconds", "peak_rss", "peak_anon")
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["runs"] = runs
    return out


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench-out", help="models, recipes and outputs")
    ap.add_argument("--n", default="2,8", help="numbers of experts, comma-separated")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma-separated, of {', '.join(METHODS)} (default: all)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool and cell (median)")
    ap.add_argument("--mergekit", default=DEFAULT_MERGEKIT,
                    help="mergekit-yaml of a mergekit 0.1.5 install ($MERGEKIT_YAML)")
    ap.add_argument("--no-compare", action="store_true", help="skip the output comparison")
    ap.add_argument("--keep-outputs", action="store_true",
                    help="keep the first repeat's outputs under WORKDIR/mkcmp/runs")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--render", metavar="JSON", help="only print the table of a saved --json")
    # The default model has 30.0M parameters (4 layers, hidden 512, vocabulary 16000; the
    # shape of merge_speed.py's small Model Stock run), not merge_speed.py's 201.9M one: there
    # mergekit's TIES takes about a minute at N = 2 (argsort of every task vector), and the whole
    # grid, two repeats, would take hours on 2 cores. At 105.8M (--layers 8 --hidden 768
    # --intermediate 2048 --vocab 32000) its TIES took 76 s at N = 2 and 203 s at N = 8.
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--input-shard-mb", type=int, default=250)
    args = ap.parse_args(argv)
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return 0

    methods = list(METHODS) if args.methods == "all" else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if not os.access(args.mergekit, os.X_OK):
        ap.error(f"--mergekit {args.mergekit}: not an executable mergekit-yaml (see the "
                 "docstring for how to install mergekit 0.1.5)")
    ns = sorted({int(x) for x in args.n.split(",")})
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    load_start = os.getloadavg()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:7.1f}s] {msg}", file=sys.stderr, flush=True)

    spec = {"vocab": args.vocab, "hidden": args.hidden, "intermediate": args.intermediate,
            "layers": args.layers, "max_shard_bytes": args.input_shard_mb * 10**6, "version": 1}
    # A model folder per spec, so that merge_speed.py's default models are not rebuilt.
    tag = f"v{args.vocab}-h{args.hidden}-i{args.intermediate}-l{args.layers}"
    models = ms.build_models(workdir / "mkcmp" / tag, spec, max(ns), log)
    log(f"models ready: {models['n_params'] / 1e6:.1f}M parameters")

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run_root = workdir / "mkcmp" / "runs"
    shutil.rmtree(run_root, ignore_errors=True)
    run_root.mkdir(parents=True)

    def command(tool: str, recipe: Path, out: Path) -> list[str]:
        if tool == "mergekit":
            return [args.mergekit, str(recipe), str(out), *MERGEKIT_FLAGS]
        return [sys.executable, "-m", "mergezoo.cli", "merge", str(recipe), "--out", str(out),
                "--overwrite", "--quiet"]

    cells = [(n, m) for n in ns for m in methods if n in METHODS[m].get("n", {n})]
    results = {cell: {"mergekit": [], "mergezoo": [], "error": None, "compare": None}
               for cell in cells}
    for n in ns:
        paths = [models["base"]] + models["experts"][:n]
        files = [f for p in paths for f in models["files"][p]]
        log(f"N={n}: warmed {len(files)} input files in {ms.read_all(files):.1f} s")
        for r in range(args.repeat):
            for i, method in enumerate(m for nn, m in cells if nn == n):
                cell = results[(n, method)]
                if cell["error"]:
                    continue
                recipe = run_root / f"{method}-N{n}.yaml"
                recipe.write_text(recipe_text(method, models["base"], models["experts"][:n]))
                order = ["mergekit", "mergezoo"] if (i + r) % 2 == 0 else ["mergezoo", "mergekit"]
                outs = {}
                for tool in order:
                    out = run_root / f"{tool}-{method}-N{n}-run{r + 1}"
                    shutil.rmtree(out, ignore_errors=True)
                    os.sync()
                    try:
                        res = run_process(command(tool, recipe, out), env, ROOT)
                    except RuntimeError as err:
                        cell["error"] = f"{tool}: {str(err).strip().splitlines()[-1]}"
                        log(f"N={n} {method} {tool}: FAILED\n{err}")
                        break
                    cell[tool].append(res)
                    outs[tool] = out
                    log(f"N={n} {method} {tool} run {r + 1}: {res['seconds']:.1f} s, CPU "
                        f"{res['cpu_seconds']:.1f} s, peak RSS {res['peak_rss'] / MB:,.0f} MB, "
                        f"anon {res['peak_anon'] / MB:,.0f} MB, load {res['loadavg_after']:.1f}")
                if r == 0 and not args.no_compare and len(outs) == 2:
                    cut = None
                    if METHODS[method].get("cut"):
                        p = METHODS[method]["model"]
                        cut = {"kind": METHODS[method]["cut"], "density": p["density"],
                               "gamma": p.get("gamma", 0.0), "base": models["base"],
                               "experts": models["experts"][:n]}
                    cell["compare"] = compare_outputs(outs["mergekit"], outs["mergezoo"], cut)
                    log(f"N={n} {method}: {agreement(method, cell['compare'])}")
                if not (args.keep_outputs and r == 0):
                    for out in outs.values():
                        shutil.rmtree(out, ignore_errors=True)

    import torch
    rows = []
    for (n, method), cell in results.items():
        runs = cell["mergekit"] + cell["mergezoo"]
        rows.append({"method": method, "n": n, "mergekit": median_run(cell["mergekit"]),
                     "mergezoo": median_run(cell["mergezoo"]), "error": cell["error"] or "",
                     "compare": cell["compare"], "agreement": agreement(method, cell["compare"]),
                     "loadavg": max((x["loadavg_after"] for x in runs), default=0.0)})
    mk_version = subprocess.run(
        [str(Path(args.mergekit).with_name("python")), "-c",
         "import importlib.metadata as m; print(m.version('mergekit'))"],
        capture_output=True, text=True).stdout.strip() or "?"
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {"cpus": os.cpu_count(), "cpu_model": ms.cpu_model(),
                    "torch": torch.__version__},
        "mergekit": {"version": mk_version, "command": [args.mergekit, "RECIPE", "OUT",
                                                         *MERGEKIT_FLAGS]},
        "mergezoo_command": command("mergezoo", Path("RECIPE"), Path("OUT")),
        "loadavg_start": load_start[0], "loadavg_end": os.getloadavg()[0],
        "loadavg_start_all": load_start, "loadavg_end_all": os.getloadavg(),
        "repeat": args.repeat, "model": {k: v for k, v in models.items() if k != "files"},
        "rows": rows, "total_seconds": time.perf_counter() - t_all,
    }
    print(markdown(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
