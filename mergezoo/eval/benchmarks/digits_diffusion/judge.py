"""The judge of the `digits-diffusion` benchmark: a small CNN with two heads (digit, style),
trained on REAL digits rendered in every style, that scores generated images.

It is saved as ``judge.safetensors`` plus ``judge_config.json`` (no pickle), next to the zoo's
models, and loaded by the judge metric modules.

Example:
    >>> import torch
    >>> from mergezoo.eval.benchmarks.digits_diffusion.judge import Judge
    >>> judge = Judge()
    >>> digit_logits, style_logits = judge(torch.zeros(2, 1, 8, 8))
    >>> tuple(digit_logits.shape), tuple(style_logits.shape)
    ((2, 10), (2, 5))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mergezoo.errors import BenchmarkDataError
from mergezoo.eval.benchmarks.digits_diffusion.data import STYLE_NAMES

WEIGHTS = "judge.safetensors"
CONFIG = "judge_config.json"


class Judge(nn.Module):
    """Conv(1->32) -> Conv(32->64) -> pool -> MLP, with a digit head and a style head."""

    def __init__(self, n_digits: int = 10, n_styles: int = len(STYLE_NAMES), width: int = 32) -> None:
        super().__init__()
        self.n_digits, self.n_styles, self.width = n_digits, n_styles, width
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 16, 128)
        self.digit = nn.Linear(128, n_digits)
        self.style = nn.Linear(128, n_styles)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, 1, 8, 8) in [0, 1] -> (digit logits, style logits)."""
        h = F.relu(self.conv1(x * 2.0 - 1.0))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.fc(h.flatten(1)))
        return self.digit(h), self.style(h)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted (digit, style index) per image."""
        self.eval()
        d, s = self(x)
        return d.argmax(-1), s.argmax(-1)


@dataclass(frozen=True)
class JudgeSpec:
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3


def train_judge(images: torch.Tensor, digits: torch.Tensor, styles: torch.Tensor,
                spec: JudgeSpec, seed: int = 0) -> tuple[Judge, list[float]]:
    """Train a judge on real rendered images; returns it and the per-step losses."""
    if len(images) == 0:
        raise BenchmarkDataError("no images to train the judge on")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=spec.lr)
    losses: list[float] = []
    judge.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(images), generator=gen)
        for b in range(0, len(images), spec.batch_size):
            idx = order[b:b + spec.batch_size]
            d, s = judge(images[idx])
            loss = F.cross_entropy(d, digits[idx]) + F.cross_entropy(s, styles[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    judge.eval()
    return judge, losses


def save_judge(judge: Judge, out_dir: Path, extra: dict | None = None) -> None:
    """Write judge.safetensors and judge_config.json (sizes, style names, ``extra``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(out_dir / WEIGHTS))
    config = {"n_digits": judge.n_digits, "n_styles": judge.n_styles, "width": judge.width,
              "styles": list(STYLE_NAMES), **(extra or {})}
    (out_dir / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")


@lru_cache(maxsize=4)
def load_judge(path: str) -> Judge:
    """Load a judge folder written by `save_judge` (cached per path)."""
    folder = Path(path)
    if not (folder / WEIGHTS).is_file():
        raise BenchmarkDataError(f"{folder}: no {WEIGHTS}; not a digits-diffusion judge")
    config = json.loads((folder / CONFIG).read_text())
    judge = Judge(config["n_digits"], config["n_styles"], config["width"])
    judge.load_state_dict(load_file(str(folder / WEIGHTS)))
    judge.eval()
    return judge
