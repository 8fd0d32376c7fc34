"""Tiny random-init models for the zoo tests, built from configs (no network, a few seconds).

Example:
    >>> tiny = build_tiny_models(Path("/tmp/tiny"))     # doctest: +SKIP
    >>> tiny.llama_base, tiny.llama_experts[0]          # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

LLAMA_BASE_ID = "org/llama-base"


@dataclass
class TinyModels:
    root: Path
    llama_base: Path
    llama_experts: list[Path] = field(default_factory=list)
    llama_big_vocab: Path | None = None
    bert: Path | None = None
    loras: list[Path] = field(default_factory=list)
    pipeline_base: Path | None = None
    pipeline_experts: list[Path] = field(default_factory=list)


def llama_config(vocab_size: int = 64):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=64, tie_word_embeddings=False)


def _perturb(model, seed: int, scale: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def build_llama(root: Path) -> tuple[Path, list[Path], Path]:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config())
    base.save_pretrained(root / "llama-base")
    experts = []
    for i in range(2):
        expert = LlamaForCausalLM(llama_config())
        expert.load_state_dict(base.state_dict())
        _perturb(expert, 100 + i)
        expert.save_pretrained(root / f"llama-expert-{i}")
        experts.append(root / f"llama-expert-{i}")
    torch.manual_seed(1)
    LlamaForCausalLM(llama_config(vocab_size=96)).save_pretrained(root / "llama-big-vocab")
    return root / "llama-base", experts, root / "llama-big-vocab"


def build_bert(root: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(2)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(root / "bert")
    return root / "bert"


def build_loras(root: Path, base: Path) -> list[Path]:
    """Two PEFT LoRA adapters on the Llama base: plain, and rank/alpha patterns with rsLoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    configs = [
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                   rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 4}, use_rslora=True),
    ]
    out = []
    for i, config in enumerate(configs):
        model = LlamaForCausalLM.from_pretrained(base)
        peft_model = get_peft_model(model, config)
        gen = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():  # LoRA B starts at zero; give the adapter a real update
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        peft_model.save_pretrained(root / f"lora-{i}")
        cfg_path = root / f"lora-{i}" / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = LLAMA_BASE_ID
        cfg_path.write_text(json.dumps(cfg, indent=2))
        out.append(root / f"lora-{i}")
    return out


def unet_config() -> dict:
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                attention_head_dim=2, norm_num_groups=4)


def build_pipelines(root: Path) -> tuple[Path, list[Path]]:
    """A diffusers-style pipeline folder (model_index.json, unet/, scheduler/) and 2 experts."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(3)
    base_unet = UNet2DConditionModel(**unet_config())
    folders = []
    for i in range(3):
        folder = root / ("pipe-base" if i == 0 else f"pipe-expert-{i - 1}")
        unet = UNet2DConditionModel(**unet_config())
        unet.load_state_dict(base_unet.state_dict())
        if i:
            _perturb(unet, 200 + i)
        unet.save_pretrained(folder / "unet")
        DDPMScheduler(num_train_timesteps=10).save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2))
        folders.append(folder)
    return folders[0], folders[1:]


def build_tiny_models(root: Path) -> TinyModels:
    root = Path(root)
    base, experts, big = build_llama(root)
    pipe_base, pipe_experts = build_pipelines(root)
    return TinyModels(root=root, llama_base=base, llama_experts=experts, llama_big_vocab=big,
                      bert=build_bert(root), loras=build_loras(root, base),
                      pipeline_base=pipe_base, pipeline_experts=pipe_experts)
