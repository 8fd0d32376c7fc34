"""`mergezoo demo`: build small experts, merge them with every method, and show the results."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="build tiny experts, merge them with every method, load and run the merges",
        description="Builds a tiny Llama base and three fine-tuned-like experts, merges them "
        "with every data-free method, loads each merge with transformers and runs it. Needs no "
        "network.")
    p.add_argument("--out", help="keep the models here (default: a temporary folder)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=run)


def _build_experts(root: Path, n_experts: int = 3) -> tuple[Path, list[Path]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    base.save_pretrained(root / "base")
    experts = []
    for i in range(n_experts):
        expert = LlamaForCausalLM(config)
        expert.load_state_dict(base.state_dict())
        with torch.no_grad():  # a sparse-ish task vector, as fine-tuning leaves
            for p in expert.parameters():
                p.add_(torch.randn_like(p) * 0.02 * (torch.rand_like(p) < 0.3))
        expert.save_pretrained(root / f"expert-{i}")
        experts.append(root / f"expert-{i}")
    return root / "base", experts


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from mergezoo.merge import list_methods, merge_models

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mergezoo-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"building a tiny Llama base and 3 experts in {root}", file=sys.stderr)
    base, experts = _build_experts(root)
    base_model = AutoModelForCausalLM.from_pretrained(base)
    prompt = torch.tensor([[1, 5, 9, 42]])
    base_logits = base_model(prompt).logits
    print(f"{'method':18} {'seconds':>8} {'params':>10} {'|logits - base|':>16}  output")
    for method in list_methods():
        models = [experts[0]] if method.needs.max_models == 2 else experts
        out = root / f"merged-{method.name}"
        result = merge_models(method.name, models, base=base, out_dir=out, device=args.device,
                              overwrite=True, progress=False)
        merged = AutoModelForCausalLM.from_pretrained(out)
        diff = (merged(prompt).logits - base_logits).abs().mean().item()
        print(f"{method.name:18} {result.seconds:8.2f} {result.n_parameters:10,} {diff:16.4f}  {out}")
    return 0
