"""Fixtures of the card tests: the zoo tests' Hub server and tiny models, and toy folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zoo.conftest import hub, hub_server, tiny  # noqa: F401  (fixtures)

TOY_CONFIG = '{"model_type": "toy", "architectures": ["ToyModel"], "dtype": "float32"}'


def toy_folder(folder: Path, seed: int, base: dict | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {f"model.layers.{i}.{m}.weight": torch.randn(6, 6, generator=g)
             for i in range(3) for m in ("mlp", "attn")}
    state["model.norm.weight"] = torch.randn(6, generator=g)
    if base is not None:
        state = {k: base[k] + 0.1 * v for k, v in state.items()}
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(TOY_CONFIG)
    return state


@pytest.fixture
def toys(tmp_path) -> dict:
    """A base and three experts near it, as local safetensors folders."""
    base = toy_folder(tmp_path / "inputs" / "base", 0)
    experts = [tmp_path / "inputs" / f"expert-{i}" for i in range(3)]
    for i, folder in enumerate(experts):
        toy_folder(folder, i + 1, base)
    return {"base": tmp_path / "inputs" / "base", "experts": experts, "root": tmp_path}
