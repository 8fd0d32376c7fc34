"""Seeding the test Hub with the tiny models."""

from __future__ import annotations

from pathlib import Path

from .hub_server import HubState
from .models import LLAMA_BASE_ID, TinyModels


def seed_llama_zoo(state: HubState, tiny: TinyModels) -> dict[str, str]:
    """Publish the Llama base, two full experts and two LoRA experts; return {name: repo ID}."""
    state.add_repo(LLAMA_BASE_ID, tiny.llama_base,
                   card={"tags": ["text-generation"], "pipeline_tag": "text-generation",
                         "library_name": "transformers"})
    ids = {"base": LLAMA_BASE_ID}
    for i, folder in enumerate(tiny.llama_experts):
        repo = f"org/llama-math-{i}"
        state.add_repo(repo, folder, card={"tags": ["math", "mergezoo-expert"],
                                            "base_model": LLAMA_BASE_ID,
                                            "pipeline_tag": "text-generation"},
                       downloads=10 * (i + 1))
        ids[f"expert{i}"] = repo
    for i, folder in enumerate(tiny.loras):
        repo = f"org/llama-lora-{i}"
        state.add_repo(repo, folder, card={"tags": ["math", "lora"], "base_model": LLAMA_BASE_ID,
                                            "library_name": "peft"})
        ids[f"lora{i}"] = repo
    return ids


def weight_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.safetensors"))
