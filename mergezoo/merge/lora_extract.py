"""LoRA out: re-factorise a merged delta into a PEFT LoRA adapter by truncated SVD.

`extract_lora` factorises (merged - base) per layer into a PEFT adapter of rank R and reports
each layer's relative reconstruction error; `ZeroSource` is the all-zeros base to factorise a
merged task vector written by the engine (`output_delta`) exactly.

Example:
    >>> report = extract_lora("merged", "base", "merged-lora", rank=8)   # doctest: +SKIP
    >>> report.max_error                                                  # doctest: +SKIP
    0.031
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from mergezoo.errors import IncompatibleModelsError, OutputExistsError, RecipeError
from mergezoo.merge.lora import PEFT_FILE
from mergezoo.merge.sources import open_source
from mergezoo.merge.tensor_source import TensorSource


# ----- LoRA out: truncated SVD of a merged delta ----------------------------------------------
@dataclass
class LoraExtractReport:
    """Per-layer relative reconstruction error ||dW - B A||_F / ||dW||_F of an extracted LoRA."""

    rank: int
    errors: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # tensor -> why it is not in the LoRA
    out_dir: Path | None = None

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def mean_error(self) -> float:
        return sum(self.errors.values()) / len(self.errors) if self.errors else 0.0

    def to_dict(self) -> dict:
        return {"rank": self.rank, "max_error": self.max_error, "mean_error": self.mean_error,
                "errors": self.errors, "skipped": self.skipped,
                "out_dir": str(self.out_dir) if self.out_dir else None}


class ZeroSource:
    """A model of zeros shaped like `like` (float tensors in float32; others copied): the base
    to factorise a merged task vector against, so that `extract_lora` reads it exactly."""

    def __init__(self, like: TensorSource, label: str = "zero base") -> None:
        self.like, self.label = like, label

    def keys(self) -> list[str]:
        return self.like.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.like.shape(key))

    def dtype(self, key: str) -> torch.dtype:
        dtype = self.like.dtype(key)
        return torch.float32 if dtype.is_floating_point else dtype

    def get(self, key: str) -> torch.Tensor:
        if not self.like.dtype(key).is_floating_point:
            return self.like.get(key)
        return torch.zeros(self.shape(key), dtype=torch.float32)


def _is_embedding(name: str) -> bool:
    return bool(re.search(r"(embed|wte|wpe|word_embeddings|position_embeddings|"
                          r"token_type_embeddings|shared)\.weight$", name))


def factorize(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-`rank` factors (B, A) of a 2-D `delta` and the relative error of B @ A."""
    delta = delta.to(torch.float32)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    b = u[:, :k] * root
    a = root[:, None] * vh[:k]
    norm = torch.linalg.norm(delta)
    error = float(torch.linalg.norm(delta - b @ a) / norm) if norm > 0 else 0.0
    if k < rank:  # pad to the declared rank so every layer has the same r
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])], dim=0)
    return b, a, error


def extract_lora(merged: str | Path | TensorSource, base: str | Path | TensorSource,
                 out_dir: str | Path, rank: int, *, base_model_name: str | None = None,
                 overwrite: bool = False, min_relative_change: float = 1e-7,
                 out_dtype: torch.dtype | None = None) -> LoraExtractReport:
    """Write a PEFT LoRA adapter of rank `rank` approximating `merged - base` into `out_dir`.

    Every 2-D (and Conv) weight that differs from the base is factorised by truncated SVD;
    tensors that LoRA cannot express (changed biases, norms) are reported in `skipped`. The
    adapter (adapter_config.json + adapter_model.safetensors) loads with
    `PeftModel.from_pretrained(base_model, out_dir)`.
    """
    if rank < 1:
        raise RecipeError(f"a LoRA rank must be at least 1, got {rank}")
    merged_src = merged if not isinstance(merged, (str, Path)) else open_source(merged, "merged model")
    base_src = base if not isinstance(base, (str, Path)) else open_source(base, "base model")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} exists and is not empty; pass overwrite=True",
                                path=str(out_dir))
    report = LoraExtractReport(rank=rank)
    tensors: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    base_keys = set(base_src.keys())
    for key in merged_src.keys():
        if key not in base_keys:
            report.skipped[key] = "not in the base model"
            continue
        if tuple(merged_src.shape(key)) != tuple(base_src.shape(key)):
            report.skipped[key] = "shape differs from the base model"
            continue
        merged_t = merged_src.get(key).to(torch.float32)
        delta = merged_t - base_src.get(key).to(torch.float32)
        scale = float(torch.linalg.norm(merged_t)) or 1.0
        if float(torch.linalg.norm(delta)) <= min_relative_change * scale:
            continue
        if not key.endswith(".weight") or delta.ndim < 2:
            report.skipped[key] = "changed, but LoRA only expresses weight matrices"
            continue
        module = key[: -len(".weight")]
        dtype = out_dtype or merged_src.dtype(key)
        if _is_embedding(key) and delta.ndim == 2:
            b, a, err = factorize(delta.T, rank)      # PEFT: dW = (B @ A).T for embeddings
            tensors[f"base_model.model.{module}.lora_embedding_A"] = a.to(dtype).contiguous()
            tensors[f"base_model.model.{module}.lora_embedding_B"] = b.to(dtype).contiguous()
        else:
            b, a, err = factorize(delta.flatten(1), rank)
            a = a.reshape(rank, *delta.shape[1:]) if delta.ndim > 2 else a
            b = b.reshape(delta.shape[0], rank, *([1] * (delta.ndim - 2)))
            tensors[f"base_model.model.{module}.lora_A.weight"] = a.to(dtype).contiguous()
            tensors[f"base_model.model.{module}.lora_B.weight"] = b.to(dtype).contiguous()
        report.errors[key] = err
        targets.append(module)
    if not targets:
        raise IncompatibleModelsError("the merged model does not differ from the base model in "
                                      "any weight matrix; there is no LoRA to extract")
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": sorted(targets),
              "base_model_name_or_path": base_model_name, "bias": "none", "fan_in_fan_out": False,
              "lora_dropout": 0.0, "use_rslora": False, "use_dora": False, "task_type": None,
              "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
              "rank_pattern": {}, "alpha_pattern": {}}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / PEFT_FILE), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "lora_errors.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report.out_dir = out_dir
    return report
