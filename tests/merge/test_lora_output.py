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
