"""Shared helpers for the merge-engine tests (imported by name; conftest.py re-exports the
fixtures): tiny safetensors model folders, a way to call
a registered method through its public API, and checks that a failed merge wrote nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergezoo.merge import MergeInputs, get_method

TOY_CONFIG = {"model_type": "toy", "architectures": ["ToyModel"]}


def call_method(name: str, base: torch.Tensor | None, models: list[torch.Tensor], *,
                params: dict | None = None, model_params: list[dict] | None = None,
                seed: int = 0, key: str = "w") -> torch.Tensor:
    """Merge one tensor with method `name` through the public registry API and return the
    merged *weights* (a task-vector method's delta is added to the base here)."""
    spec = get_method(name)
    kwargs = spec.resolve(params or {}, model_params or [], len(models))
    seeds = [seed * 1_000 + i for i in range(len(models))] if spec.random else None
    out = spec.fn(MergeInputs(key=key, base=base, models=list(models), seeds=seeds), **kwargs)
    if spec.returns == "delta":
        return base + out
    return out


def save_model(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None,
               *, filename: str = "model.safetensors") -> Path:
    """Write a tiny model folder: one safetensors file and a config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / filename))
    (folder / "config.json").write_text(json.dumps(TOY_CONFIG if config is None else config))
    return folder


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (single file or shards)."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def toy_state(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A small 'model': embeddings, three numbered layers, a final norm and a head."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    return {
        "model.embed_tokens.weight": r(10, 6),
        "model.layers.0.mlp.weight": r(6, 6),
        "model.layers.0.attn.weight": r(6, 6),
        "model.layers.1.mlp.weight": r(6, 6),
        "model.layers.1.attn.weight": r(6, 6),
        "model.layers.2.mlp.weight": r(6, 6),
        "model.layers.2.attn.weight": r(6, 6),
        "model.norm.weight": r(6),
        "lm_head.weight": r(10, 6),
    }


def perturb(state: dict[str, torch.Tensor], seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return {k: (v.float() + scale * torch.randn(v.shape, generator=g)).to(v.dtype)
            for k, v in state.items()}


def assert_nothing_written(out: Path) -> None:
    """The output folder does not exist and no temporary folder is left beside it."""
    out = Path(out)
    assert not out.exists(), f"{out} was written"
    if out.parent.exists():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
        assert not leftovers, f"temporary folders left beside the output: {leftovers}"


@pytest.fixture
def toy_zoo(tmp_path: Path) -> dict:
    """A base and three experts (small perturbations of the base) as safetensors folders."""
    base = toy_state(0)
    experts = [perturb(base, i) for i in range(3)]
    paths = {"base": save_model(tmp_path / "base", base),
             "experts": [save_model(tmp_path / f"expert{i}", e) for i, e in enumerate(experts)]}
    return {"root": tmp_path, "base_state": base, "expert_states": experts, **paths}
