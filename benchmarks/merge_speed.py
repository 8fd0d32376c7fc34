#!/usr/bin/env python
"""Merge-speed benchmark for mergezoo (issue 2; not a timed test).

Builds, once and cached under --workdir, a ~200M-parameter Llama-like bf16 model written with
safetensors the way `save_pretrained` lays it out (2 shards + index + config.json) and N
perturbed experts (base + small random deltas, bf16). For each N it measures a *floor* in the
same run -- read every input tensor once with safetensors (base + N experts) and save one output
of the same size with `safetensors.torch.save_file` -- then times each merge method through the
public API (`mergezoo.merge.merge_models`), each run in a fresh subprocess so that peak memory is
per run. The parent samples the child's /proc/<pid>/status (VmRSS, RssAnon) every ~20 ms; the
child reports its own VmHWM. RSS counts pages of the memory-mapped input files, which the kernel
can drop at will; RssAnon is the memory the merge really holds.

Page cache: by default inputs are *warm*: every input file is read once before a group of runs
and the floor is run once untimed (warm-up) before it is measured; residency is checked with
`fincore` and printed. `--cold` instead evicts the input files with posix_fadvise(DONTNEED)
before every timed run (floor and merges alike).

Usage:
    python benchmarks/merge_speed.py                               # N=2,4,8, main methods
    python benchmarks/merge_speed.py --n 2 --methods ties,average --repeat 3 --json out.json
    python benchmarks/merge_speed.py --n 8 --methods ties --py-spy bench-out/profiles
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

MAIN_METHODS = ["average", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
EXTRA_METHODS = ["breadcrumbs", "model_stock", "consensus", "ties_model"]

# Method name in this benchmark -> (registry name, params passed to merge_models).
METHODS = {
    "average": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {"lambda": 1.0}),
    "ties": ("ties", {"density": 0.2, "lambda": 1.0}),
    "ties_model": ("ties", {"density": 0.2, "lambda": 1.0, "trim_scope": "model"}),
    "dare_ties": ("dare_ties", {"density": 0.5, "lambda": 1.0}),
    "dare_linear": ("dare_linear", {"density": 0.5, "lambda": 1.0}),
    "breadcrumbs": ("breadcrumbs", {"density": 0.9, "gamma": 0.01}),
    "model_stock": ("model_stock", {}),
    "consensus": ("consensus", {"k": 2, "mask_lambda": 0.4}),
}
# Targets of issue 2 (2 CPU cores): wall time as a multiple of the floor of the same N, for
# average and task arithmetic (1.5x), TIES (either trimming scope) and DARE (2.5x). The
# other methods (Breadcrumbs, Model Stock, Consensus) have none.
TARGETS = {"average": 1.5, "task_arithmetic": 1.5, "ties": 2.5, "ties_model": 2.5,
           "dare_ties": 2.5, "dare_linear": 2.5}
ANON_LARGEST_COPIES = 3  # "a few copies of the largest tensor per input"

MERGEKIT_REFERENCE = ("mergekit 0.1.5, 2 CPU cores, two 210M-parameter experts: TIES 39 s vs a "
                      "4.3 s floor (9.1x), linear 9.2 s vs 2.9 s (3.2x), task arithmetic 7.3 s vs "
                      "3.5 s (2.1x); peak RSS 2.2 GB (anonymous 0.9 GB) for 420 MB models")

MB = 1e6


# --------------------------------------------------------------------------- model building

def llama_layout(vocab: int, hidden: int, intermediate: int, layers: int) -> list[tuple[str, tuple]]:
    """Tensor names and shapes in the order LlamaForCausalLM's state dict has them."""
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (hidden, hidden)),
                (p + "self_attn.k_proj.weight", (hidden, hidden)),
                (p + "self_attn.v_proj.weight", (hidden, hidden)),
                (p + "self_attn.o_proj.weight", (hidden, hidden)),
                (p + "mlp.gate_proj.weight", (intermediate, hidden)),
                (p + "mlp.up_proj.weight", (intermediate, hidden)),
                (p + "mlp.down_proj.weight", (hidden, intermediate)),
                (p + "input_layernorm.weight", (hidden,)),
                (p + "post_attention_layernorm.weight", (hidden,))]
    out += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return out


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def shard_plan(layout, max_shard_bytes: int, itemsize: int = 2) -> list[list[str]]:
    """Greedy sharding in state-dict order, like transformers' save_pretrained."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in layout:
        b = numel(shape) * itemsize
        if shards[-1] and size + b > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += b
    return shards


def _gen(seed: int):
    import torch
    g = torch.Generator()
    g.manual_seed(seed % (2**63))
    return g


def write_model(folder: Path, layout, shards, make_tensor, config: dict) -> None:
    import torch
    from safetensors.torch import save_file
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shapes = dict(layout)
    n = len(shards)
    names = ([f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)] if n > 1
             else ["model.safetensors"])
    weight_map, total = {}, 0
    for fname, keys in zip(names, shards):
        tensors = {}
        for key in keys:
            t = make_tensor(key, shapes[key]).to(torch.bfloat16).contiguous()
            tensors[key] = t
            weight_map[key] = fname
            total += t.numel() * t.element_size()
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        del tensors
    if n > 1:
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def build_models(workdir: Path, spec: dict, n_experts: int, log) -> dict:
    """Build (or reuse) the base model and `n_experts` experts under workdir/models."""
    import torch

    layout = llama_layout(spec["vocab"], spec["hidden"], spec["intermediate"], spec["layers"])
    shards = shard_plan(layout, spec["max_shard_bytes"])
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": spec["vocab"], "hidden_size": spec["hidden"],
        "intermediate_size": spec["intermediate"], "num_hidden_layers": spec["layers"],
        "num_attention_heads": spec["hidden"] // 64, "num_key_value_heads": spec["hidden"] // 64,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
    }
    root = workdir / "models"
    stamp = json.dumps(spec, sort_keys=True)

    def ready(folder: Path) -> bool:
        return (folder / ".bench-spec").is_file() and (folder / ".bench-spec").read_text() == stamp

    base_dir = root / "base"
    if not ready(base_dir):
        t0 = time.perf_counter()

        def base_tensor(key, shape):
            if len(shape) == 1:
                return torch.ones(shape)
            return torch.randn(shape, generator=_gen(zlib.crc32(key.encode()))) * 0.02
        write_model(base_dir, layout, shards, base_tensor, config)
        (base_dir / ".bench-spec").write_text(stamp)
        log(f"built base model in {time.perf_counter() - t0:.1f} s")

    base_handles = None
    experts = []
    for i in range(n_experts):
        folder = root / f"expert{i}"
        experts.append(folder)
        if ready(folder):
            continue
        if base_handles is None:
            from mergezoo.merge.sources import open_source  # only to read the sharded base
            base_handles = open_source(base_dir)
        t0 = time.perf_counter()
        scale = 0.1 * (1 + 0.25 * (i % 4))  # delta std relative to the base's scale

        def expert_tensor(key, shape, i=i, scale=scale):
            b = base_handles.get(key).float()
            ref = 1.0 if len(shape) == 1 else 0.02
            g = _gen(zlib.crc32(key.encode()) * 131 + 7919 * (i + 1))
            return b + torch.randn(shape, generator=g) * (ref * scale)
        write_model(folder, layout, shards, expert_tensor, config)
        (folder / ".bench-spec").write_text(stamp)
        log(f"built expert{i} in {time.perf_counter() - t0:.1f} s")
    del base_handles

    def files(folder):
        return sorted(str(p) for p in Path(folder).glob("*.safetensors"))

    largest = max(layout, key=lambda kv: numel(kv[1]))
    return {
        "base": str(base_dir), "experts": [str(e) for e in experts],
        "files": {str(f): files(f) for f in [base_dir] + experts},
        "n_params": sum(numel(s) for _, s in layout), "n_tensors": len(layout),
        "model_bytes": sum(numel(s) * 2 for _, s in layout),
        "input_shard_bytes": [sum(numel(dict(layout)[k]) * 2 for k in keys) for keys in shards],
        "largest_tensor": {"name": largest[0], "shape": list(largest[1]),
                           "bf16_bytes": numel(largest[1]) * 2,
                           "fp32_bytes": numel(largest[1]) * 4},
    }


# --------------------------------------------------------------------------- page cache

def read_all(paths: list[str]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass
    return time.perf_counter() - t0


def evict(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[str]) -> float | None:
    """Fraction of the files' bytes in the page cache (util-linux fincore), None if unknown."""
    if not shutil.which("fincore"):
        return None
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES,SIZE",
                              *paths], capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, OSError):
        return None
    res = size = 0
    for line in out.split("\n"):
        if line.strip():
            r, s = line.split()
            res, size = res + int(r), size + int(s)
    return res / size if size else None


# --------------------------------------------------------------------------- child processes

def _proc_status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def child_main(spec: dict) -> None:
    """Runs in the subprocess: one floor or one merge; prints one JSON line."""
    t_start = time.perf_counter()
    import torch
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result: dict = {}
    if spec["kind"] == "floor":
        from safetensors import safe_open
        from safetensors.torch import save_file
        import_s = time.perf_counter() - t_start
        before = _proc_status()
        c0 = os.times()
        t0 = time.perf_counter()
        inputs = [[safe_open(f, framework="pt", device="cpu") for f in files]
                  for files in spec["inputs"]]
        out = {}
        for handles in inputs:  # base first, then the experts
            for h in handles:
                for key in h.keys():
                    # safetensors >= 0.6 returns views of the memory-mapped file: clone() is
                    # what reads the bytes, as the engine must read them.
                    t = h.get_tensor(key).clone()
                    if handles is inputs[0]:
                        out[key] = t  # the output has the size of one model
                    del t
        os.makedirs(spec["out_dir"], exist_ok=True)
        save_file(out, os.path.join(spec["out_dir"], "model.safetensors"),
                  metadata={"format": "pt"})
        seconds = time.perf_counter() - t0
        result.update(seconds=seconds, engine_seconds=seconds)
    else:
        from mergezoo.merge import merge_models
        import_s = time.perf_counter() - t_start
        before = _proc_status()
        c0 = os.times()
        t0 = time.perf_counter()
        res = merge_models(spec["method"], spec["experts"], base=spec["base"],
                           out_dir=spec["out_dir"], params=spec["params"], progress=False,
                           overwrite=True, device=spec["device"])
        result.update(seconds=time.perf_counter() - t0, engine_seconds=res.seconds,
                      device=res.device, n_parameters=res.n_parameters)
    c1 = os.times()
    after = _proc_status()
    result["cpu_seconds"] = (c1.user - c0.user) + (c1.system - c0.system)
    out_files = sorted(Path(spec["out_dir"]).glob("*.safetensors"))
    result.update(import_seconds=import_s, baseline_rss=before.get("VmRSS"),
                  baseline_anon=before.get("RssAnon"), vmhwm=after.get("VmHWM"),
                  output_shards={p.name: p.stat().st_size for p in out_files})
    print("BENCH-RESULT " + json.dumps(result), flush=True)


def run_child(spec: dict, *, sample_s: float = 0.02, profile: Path | None = None) -> dict:
    """Run one floor/merge in a fresh interpreter, sampling its memory from here; with
    `profile`, attach `py-spy record --nonblocking` to it (it is never paused)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spy = None
    if profile is not None:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--nonblocking",
                                "--threads", "--rate", "50", "--format", "raw",
                                "--output", str(profile)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    watched = proc.pid
    while proc.poll() is None:
        st = _proc_status(watched)
        for k in peak:
            peak[k] = max(peak[k], st.get(k, 0))
        time.sleep(sample_s)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if spy is not None:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.terminate()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"child failed (rc={proc.returncode}): {spec.get('method', 'floor')}\n"
                           f"{stderr[-4000:]}")
    res = json.loads(line.removeprefix("BENCH-RESULT "))
    res.update(process_seconds=wall, loadavg_before=load0, loadavg_after=os.getloadavg()[0], peak_rss=max(peak["VmRSS"], res.get("vmhwm") or 0),
               peak_rss_sampled=peak["VmRSS"], peak_anon=peak["RssAnon"],
               peak_file=peak["RssFile"])
    return res


# --------------------------------------------------------------------------- reporting

def fmt_mb(b) -> str:
    return "-" if b is None else f"{b / MB:,.0f}"


def markdown(report: dict) -> str:
    m = report["model"]
    lt = m["largest_tensor"]
    lines = [
        f"Model: {m['n_params'] / 1e6:.1f}M parameters, {m['n_tensors']} tensors, bf16, "
        f"{m['model_bytes'] / MB:.0f} MB in {len(m['input_shard_bytes'])} shards "
        f"({', '.join(fmt_mb(b) for b in m['input_shard_bytes'])} MB); largest tensor "
        f"{lt['name']} {tuple(lt['shape'])} = {lt['bf16_bytes'] / MB:.0f} MB bf16, "
        f"{lt['fp32_bytes'] / MB:.0f} MB fp32.",
        f"Machine: {report['machine']['cpus']} CPUs ({report['machine']['cpu_model']}), "
        f"torch {report['machine']['torch']} with {report['machine']['torch_threads']} threads, "
        f"device {report['device']}.",
        f"Page cache: {report['cache_note']}",
        f"Wall = time of the merge_models()/floor call inside the child (imports excluded), "
        f"median of {report['repeat']} run(s). Anon budget = largest output shard + "
        f"{ANON_LARGEST_COPIES} x (N+1) x largest tensor in fp32; judged on peak RssAnon minus "
        f"the child's RssAnon before the call (torch itself). CPU s = user+sys of the child "
        f"during the call (all threads); load = 1-min load average after the run: above "
        f"{os.cpu_count()} means other processes competed for the CPUs and wall times are "
        f"inflated.",
        "",
        "| N | method | wall s | x floor | target | CPU s | CPU x floor | load | peak RSS MB | "
        "peak RssAnon MB | anon over baseline MB | anon budget MB | out shard MB | ok |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        target = row.get("target")
        ok_t = target is None or row["ratio"] <= target
        ok_m = row["anon_budget"] is None or row["anon_over_baseline"] <= row["anon_budget"]
        ok = "floor" if row["method"] == "floor" else (
            ("yes" if ok_t and ok_m else "NO (" + ", ".join(
                x for x, bad in (("time", not ok_t), ("memory", not ok_m)) if bad) + ")"))
        lines.append(
            f"| {row['n']} | {row['method']} | {row['seconds']:.2f} | {row['ratio']:.2f} | "
            f"{'-' if target is None else f'{target:.1f}x'} | {row['cpu_seconds']:.1f} | "
            f"{row['cpu_ratio']:.2f} | {row['loadavg']:.1f} | {fmt_mb(row['peak_rss'])} | "
            f"{fmt_mb(row['peak_anon'])} | {fmt_mb(row['anon_over_baseline'])} | "
            f"{fmt_mb(row['anon_budget'])} | {fmt_mb(row['out_shard'])} | {ok} |")
    lines += ["", f"Reference: {MERGEKIT_REFERENCE}.",
              f"Whole benchmark: {report['total_seconds']:.0f} s (building models "
              f"{report['build_seconds']:.0f} s)."]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench-out", help="cache for models and outputs")
    ap.add_argument("--n", default="2,4,8", help="numbers of experts, comma-separated")
    ap.add_argument("--methods", default=",".join(MAIN_METHODS),
                    help=f"comma-separated; 'all' adds {', '.join(EXTRA_METHODS)}")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per cell (median shown)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--device", default="auto", help="merge device (auto, cpu, cuda)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the child (0: default)")
    ap.add_argument("--cold", action="store_true",
                    help="evict input files from the page cache before every timed run")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--input-shard-mb", type=int, default=250,
                    help="max input shard size (save_pretrained-like sharding)")
    ap.add_argument("--py-spy", metavar="DIR",
                    help="attach `py-spy record --nonblocking --threads` (50 Hz, never pauses "
                         "the merge) to the first timed run of the --py-spy-methods at "
                         "--py-spy-n and write collapsed stacks to DIR/<method>-N<n>.txt")
    ap.add_argument("--py-spy-n", default="8", help="N values to profile (comma-separated)")
    ap.add_argument("--py-spy-methods", default="average,ties,dare_ties")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0

    t_all = time.perf_counter()
    methods = MAIN_METHODS + EXTRA_METHODS if args.methods == "all" else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    ns = sorted({int(x) for x in args.n.split(",")})
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:7.1f}s] {msg}", file=sys.stderr, flush=True)

    spec = {"vocab": args.vocab, "hidden": args.hidden, "intermediate": args.intermediate,
            "layers": args.layers, "max_shard_bytes": args.input_shard_mb * 10**6, "version": 1}
    t0 = time.perf_counter()
    models = build_models(workdir, spec, max(ns), log)
    build_s = time.perf_counter() - t0
    log(f"models ready ({models['n_params'] / 1e6:.1f}M params, {build_s:.1f} s)")

    import torch
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out_root = workdir / "runs"
    rows, raw = [], []
    largest_fp32 = models["largest_tensor"]["fp32_bytes"]

    def one(kind: str, n: int, method: str | None, profile: Path | None = None) -> dict:
        experts = models["experts"][:n]
        paths = [models["base"]] + experts
        files = [f for p in paths for f in models["files"][p]]
        out_dir = out_root / (f"{method}-N{n}" if method else f"floor-N{n}")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.sync()  # flush the previous run's output so its writeback is not billed to this one
        if args.cold:
            evict(files)
        resident = resident_fraction(files)
        child = {"kind": kind, "out_dir": str(out_dir), "threads": args.threads,
                 "device": device}
        if kind == "floor":
            child["inputs"] = [models["files"][p] for p in paths]
        else:
            name, params = METHODS[method]
            child.update(method=name, params=params, base=models["base"], experts=experts)
        res = run_child(child, profile=profile)
        res["resident_before"] = resident
        shutil.rmtree(out_dir, ignore_errors=True)
        return res

    cache_notes = []
    profiles = {}
    prof_dir = Path(args.py_spy).absolute() if args.py_spy else None
    if prof_dir:
        if not shutil.which("py-spy"):
            ap.error("--py-spy needs py-spy on PATH (pip install py-spy)")
        prof_dir.mkdir(parents=True, exist_ok=True)
    spy_ns = {int(x) for x in args.py_spy_n.split(",")}
    spy_methods = set(args.py_spy_methods.split(","))
    for n in ns:
        paths = [models["base"]] + models["experts"][:n]
        files = [f for p in paths for f in models["files"][p]]
        if not args.cold:
            warm_s = read_all(files)
            res_frac = resident_fraction(files)
            log(f"N={n}: read {len(files)} input files to warm the page cache in {warm_s:.1f} s; "
                f"resident: {'?' if res_frac is None else f'{res_frac:.0%}'}")
            one("floor", n, None)  # untimed warm-up (also warms safetensors/torch code paths)
        floors = [one("floor", n, None) for _ in range(args.repeat)]
        floor_s = statistics.median(r["seconds"] for r in floors)
        floor_cpu = statistics.median(r["cpu_seconds"] for r in floors)
        log(f"N={n}: floor {floor_s:.2f} s, CPU {floor_cpu:.1f} s "
            f"(runs: {[round(r['seconds'], 2) for r in floors]})")
        cache_notes += [r["resident_before"] for r in floors]
        f0 = floors[0]
        rows.append({"n": n, "method": "floor", "seconds": floor_s, "ratio": 1.0, "target": None,
                     "cpu_seconds": floor_cpu, "cpu_ratio": 1.0,
                     "loadavg": max(r["loadavg_after"] for r in floors),
                     "peak_rss": max(r["peak_rss"] for r in floors),
                     "peak_anon": max(r["peak_anon"] for r in floors),
                     "anon_over_baseline": max(r["peak_anon"] - (r["baseline_anon"] or 0)
                                               for r in floors),
                     "anon_budget": None, "out_shard": max(f0["output_shards"].values()),
                     "runs": floors})
        for method in methods:
            runs = []
            for r in range(args.repeat):
                prof = None
                if prof_dir and r == 0 and n in spy_ns and method in spy_methods:
                    prof = prof_dir / f"{method}-N{n}.txt"
                    profiles[prof.name] = str(prof)
                try:
                    runs.append(one("merge", n, method, profile=prof))
                except RuntimeError as err:
                    log(f"N={n} {method}: FAILED\n{err}")
                    break
            if not runs:
                continue
            cache_notes += [r["resident_before"] for r in runs]
            secs = statistics.median(r["seconds"] for r in runs)
            out_shard = max(max(r["output_shards"].values()) for r in runs)
            row = {"n": n, "method": method, "seconds": secs, "ratio": secs / floor_s,
                   "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
                   "cpu_ratio": statistics.median(r["cpu_seconds"] for r in runs) / floor_cpu,
                   "loadavg": max(r["loadavg_after"] for r in runs),
                   "target": TARGETS.get(method),
                   "engine_seconds": statistics.median(r["engine_seconds"] for r in runs),
                   "peak_rss": max(r["peak_rss"] for r in runs),
                   "peak_anon": max(r["peak_anon"] for r in runs),
                   "anon_over_baseline": max(r["peak_anon"] - (r["baseline_anon"] or 0)
                                             for r in runs),
                   "anon_budget": out_shard + ANON_LARGEST_COPIES * (n + 1) * largest_fp32,
                   "out_shard": out_shard, "runs": runs}
            rows.append(row)
            log(f"N={n} {method}: {secs:.2f} s ({row['ratio']:.2f}x floor), CPU "
                f"{row['cpu_seconds']:.1f} s ({row['cpu_ratio']:.2f}x floor CPU), load "
                f"{row['loadavg']:.1f}, peak RSS {fmt_mb(row['peak_rss'])} MB, peak anon "
                f"{fmt_mb(row['peak_anon'])} MB")
            if args.json:  # partial results, in case the run is cut short
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json + ".partial").write_text(json.dumps(
                    {"model": {k: v for k, v in models.items() if k != "files"},
                     "rows": rows}, indent=2) + "\n")

    known = [c for c in cache_notes if c is not None]
    if args.cold:
        cache_note = ("COLD: input files evicted with posix_fadvise(DONTNEED) before every timed "
                      f"run (resident before runs: {min(known, default=0):.0%}-"
                      f"{max(known, default=0):.0%}); output writes go to the page cache, "
                      "synced between runs.")
    else:
        cache_note = ("WARM: every input file was read once before each N and the floor was run "
                      "once untimed before being measured; input bytes resident in the page "
                      "cache before each timed run: "
                      + (f"{min(known):.0%}-{max(known):.0%}" if known else "unknown (no fincore)")
                      + "; outputs are written to the page cache (os.sync() between runs, "
                      "not timed).")

    report = {
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "torch": torch.__version__,
                    "torch_threads": args.threads or torch.get_num_threads(),
                    "python": platform.python_version()},
        "device": device, "repeat": args.repeat, "cold": args.cold, "cache_note": cache_note,
        "model": {k: v for k, v in models.items() if k not in ("files",)},
        "anon_budget_rule": f"largest output shard + {ANON_LARGEST_COPIES} x (N+1) x largest "
                            "tensor in fp32",
        "targets": TARGETS, "mergekit_reference": MERGEKIT_REFERENCE,
        "rows": rows, "profiles": profiles, "build_seconds": build_s,
        "total_seconds": time.perf_counter() - t_all,
    }
    print(markdown(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
