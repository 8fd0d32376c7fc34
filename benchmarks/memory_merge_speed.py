#!/usr/bin/env python
"""In-memory merge speed (issue 12, "Merging in memory"; not a timed test).

Builds a ~10M-parameter Llama-like float32 model (random tensors: embeddings, 8 layers of
attention and MLP projections and norms, a head) and 5 experts (base + small random deltas),
then times 10-point grids merged in memory with `mergezoo.merge.TaskVectors` (task vectors
computed once, outside the timing, as the benchmark runner and the Space do) and the same
grids through the file-based engine (`merge_models`, safetensors folders to a temporary
directory, one merge per point). Each grid's time includes its first point (the merge that a
lambda sweep then reuses). Prints merges per second.

Usage:
    python benchmarks/memory_merge_speed.py                 # 2 torch threads
    python benchmarks/memory_merge_speed.py --threads 2 --no-disk
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from mergezoo.merge import TaskVectors, merge_models

HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 256, 688, 8, 8000


def llama_like(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    state = {"model.embed_tokens.weight": r(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{p}self_attn.{name}.weight"] = r(HIDDEN, HIDDEN)
        state[f"{p}mlp.gate_proj.weight"] = r(INTERMEDIATE, HIDDEN)
        state[f"{p}mlp.up_proj.weight"] = r(INTERMEDIATE, HIDDEN)
        state[f"{p}mlp.down_proj.weight"] = r(HIDDEN, INTERMEDIATE)
        state[f"{p}input_layernorm.weight"] = torch.ones(HIDDEN)
        state[f"{p}post_attention_layernorm.weight"] = torch.ones(HIDDEN)
    state["model.norm.weight"] = torch.ones(HIDDEN)
    state["lm_head.weight"] = r(VOCAB, HIDDEN)
    return state


def experts_of(base: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        out.append({k: v + 0.002 * torch.randn(v.shape, generator=g) for k, v in base.items()})
    return out


GRIDS = {  # name -> (method, list of params, 10 points)
    "ties lambda grid (density 0.2)":
        ("ties", [{"density": 0.2, "lambda": 0.2 * (i + 1)} for i in range(10)]),
    "ties density grid (lambda 1)":
        ("ties", [{"density": 0.1 * (i + 1), "lambda": 1.0} for i in range(10)]),
    "task_arithmetic lambda grid":
        ("task_arithmetic", [{"lambda": 0.1 * (i + 1)} for i in range(10)]),
}


def time_memory(tv: TaskVectors, method: str, grid: list[dict]) -> tuple[float, float, float]:
    """Wall seconds of the grid, of its first point, and CPU seconds of the grid (this
    process, all threads: less sensitive to other processes on the machine than wall time)."""
    start, cpu = time.perf_counter(), time.process_time()
    first = None
    for params in grid:
        tv.merge(method, params)
        first = first or time.perf_counter() - start
    return time.perf_counter() - start, first, time.process_time() - cpu


def write_folder(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    from transformers import LlamaConfig

    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=4,
                tie_word_embeddings=False).save_pretrained(folder)
    return folder


def time_disk(root: Path, base: Path, experts: list[Path], method: str, grid: list[dict]) -> float:
    start = time.perf_counter()
    for i, params in enumerate(grid):
        merge_models(method, experts, base=base, out_dir=root / f"out-{method}-{i}",
                     params=params, device="cpu", progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--experts", type=int, default=5)
    parser.add_argument("--no-disk", action="store_true", help="skip the file-based engine")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = llama_like(0)
    experts = experts_of(base, args.experts)
    n_params = sum(t.numel() for t in base.values())
    print(f"model: {n_params / 1e6:.1f}M parameters, {args.experts} experts, float32, "
          f"{args.threads} torch threads, load average {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    tv = TaskVectors(base, experts)
    print(f"task vectors: {time.perf_counter() - start:.2f} s (once)")
    results = {}
    for name, (method, grid) in GRIDS.items():
        seconds, first, cpu = time_memory(tv, method, grid)
        results[f"memory: {name}"] = len(grid) / seconds
        print(f"in memory    | {name:30s} | {seconds:6.2f} s | {len(grid) / seconds:6.1f} merges/s "
              f"| first point {first:5.2f} s | CPU {cpu:6.2f} s")
    if not args.no_disk:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            base_dir = write_folder(root / "base", base)
            expert_dirs = [write_folder(root / f"expert-{i}", e) for i, e in enumerate(experts)]
            for name, (method, grid) in GRIDS.items():
                if "density grid" in name:
                    continue
                seconds = time_disk(root, base_dir, expert_dirs, method, grid)
                results[f"disk: {name}"] = len(grid) / seconds
                print(f"merge_models | {name:30s} | {seconds:6.2f} s | "
                      f"{len(grid) / seconds:6.1f} merges/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
