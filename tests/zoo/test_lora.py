"""LoRA experts: full deltas checked against peft's own merge, and SVD re-factorisation."""

from __future__ import annotations

import json

import pytest
import torch

from mergezoo.errors import IncompatibleModelsError
from mergezoo.merge.lora import LoraSource, open_lora_source
from mergezoo.merge.lora_extract import extract_lora, factorize
from mergezoo.merge.sources import open_source


def _peft_merged_state(base_dir, adapter_dir, model_cls):
    from peft import PeftModel

    model = model_cls.from_pretrained(base_dir)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def _assert_matches_peft(source: LoraSource, expected: dict[str, torch.Tensor]) -> None:
    changed = 0
    for key in source.keys():
        got = source.get(key)
        assert got.shape == expected[key].shape, key
        assert torch.allclose(got, expected[key], atol=1e-6), key
        changed += source.delta(key) is not None
    assert changed == len(source.layers) > 0


@pytest.mark.parametrize("index", [0, 1])
def test_lora_source_matches_peft_merge_and_unload(tiny, index):
    """Plain LoRA, and rank_pattern / alpha_pattern with rsLoRA (alpha / sqrt(r))."""
    from transformers import LlamaForCausalLM

    base = open_source(tiny.llama_base, "base")
    source = open_lora_source(tiny.loras[index], "expert 'lora'", base)
    _assert_matches_peft(source, _peft_merged_state(tiny.llama_base, tiny.loras[index],
                                                    LlamaForCausalLM))
    config = json.loads((tiny.loras[index] / "adapter_config.json").read_text())
    layer = source.layers["model.layers.0.self_attn.v_proj.weight"]
    if index == 1:  # v_proj: rank 2 by rank_pattern, alpha 16, rsLoRA
        assert layer.scaling == pytest.approx(16 / 2 ** 0.5)
        assert source.layers["model.layers.0.mlp.down_proj.weight"].scaling == pytest.approx(4 / 2)
    else:
        assert layer.scaling == pytest.approx(config["lora_alpha"] / config["r"])


def test_embedding_lora_and_modules_to_save(tmp_path, tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

    llama = LlamaForCausalLM.from_pretrained(tiny.llama_base)
    peft_model = get_peft_model(llama, LoraConfig(r=3, lora_alpha=6,
                                                  target_modules=["embed_tokens", "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path / "emb")
    source = open_lora_source(tmp_path / "emb", "emb", open_source(tiny.llama_base))
    assert source.layers["model.embed_tokens.weight"].layout == "embedding"
    _assert_matches_peft(source, _peft_merged_state(tiny.llama_base, tmp_path / "emb",
                                                    LlamaForCausalLM))

    bert = AutoModelForSequenceClassification.from_pretrained(tiny.bert)
    peft_bert = get_peft_model(bert, LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                target_modules=["query", "value"]))
    with torch.no_grad():
        for name, p in peft_bert.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    peft_bert.save_pretrained(tmp_path / "bert-lora")
    source = open_lora_source(tmp_path / "bert-lora", "bert", open_source(tiny.bert))
    assert set(source.replacements) == {"classifier.weight", "classifier.bias"}
    expected = _peft_merged_state(tiny.bert, tmp_path / "bert-lora",
                                  AutoModelForSequenceClassification)
    for key in source.keys():
        assert torch.allclose(source.get(key), expected[key], atol=1e-6), key


def test_adapter_that_does_not_fit_the_base_is_refused(tiny):
    with pytest.raises(IncompatibleModelsError, match="adapter tensor\\(s\\) match no tensor of "
                                                      "the base model: .*q_proj"):
        open_lora_source(tiny.loras[0], "expert 'lora'", open_source(tiny.bert))
    with pytest.raises(IncompatibleModelsError, match="do not fit the base tensor "
                                                      "model.layers.0.self_attn.q_proj.weight"):
        open_lora_source(tiny.loras[0], "expert 'lora'", _shrunk_base(tiny))


def _shrunk_base(tiny):
    """The Llama base, except that q_proj claims another shape than the adapter's factors."""
    base = open_source(tiny.llama_base)

    class Shrunk:
        label, weights_stem = "shrunk", "model"

        def keys(self):
            return base.keys()

        def shape(self, key):
            return (16, 32) if key.endswith("q_proj.weight") else base.shape(key)

        def dtype(self, key):
            return base.dtype(key)

        def get(self, key):
            return base.get(key)

    return Shrunk()


def test_dora_adapters_are_refused(tmp_path, tiny):
    import shutil

    shutil.copytree(tiny.loras[0], tmp_path / "dora")
    config = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    config["use_dora"] = True
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(IncompatibleModelsError, match="DoRA"):
        open_lora_source(tmp_path / "dora", "dora", open_source(tiny.llama_base))


def test_factorize_is_exact_at_full_rank_and_optimal_below():
    torch.manual_seed(0)
    low_rank = torch.randn(12, 3) @ torch.randn(3, 10)
    b, a, err = factorize(low_rank, 3)
    assert err < 1e-5 and torch.allclose(b @ a, low_rank, atol=1e-5)
    full = torch.randn(12, 10)
    b, a, err = factorize(full, 4)
    s = torch.linalg.svdvals(full)
    assert err == pytest.approx(float(s[4:].norm() / s.norm()), rel=1e-4)  # Eckart-Young
    b, a, err = factorize(full, 50)  # rank above min(shape): exact, padded to the rank
    assert a.shape == (50, 10) and b.shape == (12, 50) and err < 1e-5


def test_extract_lora_reports_errors_and_loads_in_peft(tmp_path, tiny):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    # A "merged" model whose delta is exactly the rank-4 LoRA 0: extraction at rank 4 is exact.
    merged_dir = tmp_path / "merged"
    merged = LlamaForCausalLM.from_pretrained(tiny.llama_base)
    merged.load_state_dict(_peft_merged_state(tiny.llama_base, tiny.loras[0], LlamaForCausalLM))
    merged.save_pretrained(merged_dir)
    report = extract_lora(merged_dir, tiny.llama_base, tmp_path / "lora-out", rank=4,
                          base_model_name="org/llama-base")
    assert set(report.errors) == {f"model.layers.{i}.self_attn.{p}.weight"
                                  for i in range(2) for p in ("q_proj", "v_proj")}
    assert report.max_error < 1e-4 and report.skipped == {}
    saved = json.loads((tmp_path / "lora-out" / "lora_errors.json").read_text())
    assert saved["rank"] == 4 and set(saved["errors"]) == set(report.errors)
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny.llama_base),
                                      tmp_path / "lora-out")
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, merged(ids).logits, atol=1e-4)

    # A full fine-tune at rank 2: lossy, every changed matrix reported, norms/biases skipped.
    report = extract_lora(tiny.llama_experts[0], tiny.llama_base, tmp_path / "lossy", rank=2)
    assert 0.5 < report.mean_error < 1.0 and len(report.errors) == 16
    assert "model.norm.weight" in report.skipped
    assert all(0 < e < 1 for e in report.errors.values())


def _unet_with_lora(tiny, r: int, alpha: int):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny.pipeline_base / "unet")
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return unet, config


def _peft_unet_weights(unet) -> dict[str, torch.Tensor]:
    """Each LoRA layer's merged weight, as peft computes it (base + get_delta_weight)."""
    from peft.tuners.lora import LoraLayer

    return {f"{name}.weight": (m.base_layer.weight + m.get_delta_weight("default")).detach()
            for name, m in unet.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("layout", ["peft", "old-diffusers", "kohya"])
def test_diffusers_lora_files_on_a_unet(tmp_path, tiny, layout):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    r, alpha = (2, 4) if layout != "old-diffusers" else (2, 2)  # old files carry no alpha
    unet, config = _unet_with_lora(tiny, r, alpha)
    state = get_peft_model_state_dict(unet)
    folder = tmp_path / layout
    if layout == "peft":
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state,
                                                  unet_lora_adapter_metadata=config.to_dict())
    elif layout == "old-diffusers":
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=convert_state_dict_to_diffusers(state))
    else:
        kohya = {}
        for key, value in state.items():
            module, part = key.rsplit(".lora_", 1)
            name = "lora_unet_" + module.replace(".", "_")
            kohya[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
            kohya[f"{name}.alpha"] = torch.tensor(float(alpha))
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in kohya.items()},
                  str(folder / "pytorch_lora_weights.safetensors"))
    base = open_source(tiny.pipeline_base / "unet", "base unet")
    source = open_lora_source(folder, f"{layout} lora", base)
    expected = _peft_unet_weights(unet)
    assert set(source.layers) == set(expected) and len(expected) == 32
    for key, weight in expected.items():
        assert torch.allclose(source.get(key), weight, atol=1e-6), key
    untouched = "conv_in.weight"
    assert torch.equal(source.get(untouched), base.get(untouched))
