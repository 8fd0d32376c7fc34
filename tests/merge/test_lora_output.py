"""`output: lora`: the merged delta re-factorised into a PEFT LoRA by truncated SVD."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import BertConfig, BertModel

from mergezoo.cli import main
from mergezoo.errors import RecipeError
from mergezoo.merge import MergeRecipe, merge_models, run_recipe

CONFIG = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=48)


@pytest.fixture(scope="module")
def low_rank_experts(tmp_path_factory):
    """A tiny BERT base and two experts whose attention query matrices moved by rank-2 deltas,
    so the task-arithmetic sum has rank <= 4 and a rank-4 LoRA can hold it exactly."""
    root = tmp_path_factory.mktemp("lora-out")
    torch.manual_seed(0)
    base = BertModel(CONFIG).eval()
    base.save_pretrained(root / "base")
    experts = []
    for i in range(2):
        expert = BertModel(CONFIG)
        expert.load_state_dict(base.state_dict())
        with torch.no_grad():
            for layer in expert.encoder.layer:
                w = layer.attention.self.query.weight
                w.add_(0.05 * torch.randn(w.shape[0], 2) @ torch.randn(2, w.shape[1]))
        expert.save_pretrained(root / f"e{i}")
        experts.append(root / f"e{i}")
    return root, root / "base", experts


def test_lora_output_equals_the_full_merge(low_rank_experts):
    root, base, experts = low_rank_experts
    full = merge_models("task_arithmetic", experts, base=base, out_dir=root / "full", progress=False)
    recipe = MergeRecipe(merge_method="task_arithmetic", base_model=str(base),
                         models=[{"model": str(e)} for e in experts], output="lora", rank=4)
    result = run_recipe(recipe, out_dir=root / "lora", progress=False)
    out = root / "lora"
    assert {"adapter_config.json", "adapter_model.safetensors", "lora_errors.json",
            "mergezoo_recipe.yaml", "mergezoo_merge.json"} <= {p.name for p in out.iterdir()}
    assert max(result.lora_errors.values()) < 1e-4
    assert all("query" in key for key in result.lora_errors)
    # PEFT loads the adapter onto the base and reproduces the full merge.
    merged_by_peft = PeftModel.from_pretrained(BertModel.from_pretrained(base), out).merge_and_unload()
    reference = BertModel.from_pretrained(full.out_dir).state_dict()
    for key, value in merged_by_peft.state_dict().items():
        torch.testing.assert_close(value, reference[key], atol=1e-5, rtol=1e-4)
    assert not [p for p in root.iterdir() if p.name.startswith(".lora")]


def test_low_rank_truncation_reports_its_error(low_rank_experts, capsys):
    root, base, experts = low_rank_experts
    status = main(["merge", "--method", "task_arithmetic", "--base", str(base), *map(str, experts),
                   "--out", str(root / "lora1"), "--output", "lora", "--rank", "1"])
    assert status == 0
    assert "LoRA rank 1: relative reconstruction error" in capsys.readouterr().err
    report = json.loads((root / "lora1" / "lora_errors.json").read_text())
    # rank 1 cannot hold a rank-4 delta: the loss is reported per layer, not hidden
    assert report["rank"] == 1 and len(report["errors"]) == CONFIG.num_hidden_layers
    assert 0.1 < report["max_error"] < 1.0


def test_lora_output_needs_rank_and_base(low_rank_experts):
    root, base, experts = low_rank_experts
    with pytest.raises(RecipeError, match="rank"):
        MergeRecipe.from_dict({"merge_method": "average", "models": [str(e) for e in experts],
                               "output": "lora"})
    assert not (root / "nothing").exists()


@pytest.fixture(scope="module")
def bf16_lora_experts(tmp_path_factory):
    """A tiny bf16 Llama base and two PEFT LoRA experts of rank 2 on q_proj and v_proj, with
    non-zero B: their task-arithmetic sum has rank <= 4 in every adapted layer."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("bf16-lora")
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(root / "base")
    deltas: dict[str, torch.Tensor] = {}
    for i in range(2):
        model = get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"),
                               LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(20 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        model.save_pretrained(root / f"lora{i}")
        factors = load_file(str(root / f"lora{i}" / "adapter_model.safetensors"))
        for key in factors:
            if key.endswith("lora_A.weight"):
                stem = key.removesuffix(".lora_A.weight")
                target = stem.removeprefix("base_model.model.") + ".weight"
                d = (factors[f"{stem}.lora_B.weight"].float() @ factors[key].float()) * 2.0
                deltas[target] = deltas.get(target, 0) + d
    return root, deltas


def test_bf16_base_lora_merge_refactorises_exactly(bf16_lora_experts):
    """Task arithmetic of two rank-2 LoRAs on a bf16 base, `output: lora` at rank 4: the
    deltas come from the factors in float32 (not (W + dW) - W after rounding to bf16), so the
    rank-4 adapter holds the merge to float32 precision."""
    from safetensors.torch import load_file

    root, deltas = bf16_lora_experts
    recipe = MergeRecipe(merge_method="task_arithmetic", base_model=str(root / "base"),
                         models=[{"model": str(root / f"lora{i}")} for i in range(2)],
                         output="lora", rank=4)
    result = run_recipe(recipe, out_dir=root / "out", progress=False)
    assert set(result.lora_errors) == set(deltas)
    assert max(result.lora_errors.values()) < 1e-5
    factors = load_file(str(root / "out" / "adapter_model.safetensors"))
    for target, want in deltas.items():
        stem = "base_model.model." + target.removesuffix(".weight")
        a, b = factors[f"{stem}.lora_A.weight"], factors[f"{stem}.lora_B.weight"]
        assert a.dtype == torch.float32
        got = b @ a  # lora_alpha == r: scaling 1
        assert float((got - want).norm() / want.norm()) < 1e-5, target


def test_bf16_base_lora_full_merge_uses_exact_deltas(bf16_lora_experts):
    """The full merge reads each LoRA expert's exact delta: in float32 output, merged - base
    equals the sum of B @ A * scaling up to float32 rounding of base + delta."""
    from mergezoo.merge.engine import merge_sources
    from mergezoo.merge.sources import open_source

    root, deltas = bf16_lora_experts
    base = open_source(root / "base", "base")
    experts = [open_source(root / f"lora{i}", f"lora{i}", base_source=base) for i in range(2)]
    merge_sources("task_arithmetic", experts, base=base, out_dir=root / "full",
                  out_dtype=torch.float32, progress=False)
    merged = {}
    for f in (root / "full").glob("*.safetensors"):
        from safetensors.torch import load_file
        merged.update(load_file(str(f)))
    for target, want in deltas.items():
        w = base.get(target).float()
        got = merged[target] - w
        # float32 rounding of w + delta: at most half an ulp of |w| + |delta| per entry
        assert float((got - want).abs().max()) <= float((w.abs() + want.abs()).max()) * 2 ** -23
