"""Seeding the test Hub with the tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

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


def add_to_zoo(zoo: Path, repo_id: str, source: Path, **card_fields) -> Path:
    """Copy the model folder `source` into the local zoo `zoo` as `repo_id`, with a card whose
    front matter holds `card_fields` (tags, base_model, pipeline_tag...); return its path."""
    target = zoo / repo_id
    shutil.copytree(source, target)
    data = ModelCardData(**card_fields)
    ModelCard(f"---\n{data.to_yaml()}\n---\n# {repo_id}\n").save(target / "README.md")
    return target
