"""The generator of the `digits-diffusion` benchmark: a small diffusers UNet2DConditionModel on
8x8 one-channel digits, conditioned on digit and style through separate embeddings.

Conditioning lives entirely inside the UNet, so a saved folder loads with
``UNet2DConditionModel.from_pretrained`` and needs no wrapper weights:

- ``class_labels`` is the concatenation ``[one_hot(digit, 10), one_hot(style, S)]`` fed to the
  UNet's ``class_embedding`` (``class_embed_type="projection"``). Its first linear layer is the
  sum of a digit embedding (its first 10 columns) and a separate style embedding (the last S
  columns); the result is added to the timestep embedding of every ResNet block.
- ``encoder_hidden_states`` are two tokens, the digit one-hot and the style one-hot (each padded
  to 10 + S), projected by ``encoder_hid_proj`` and read by cross-attention.

The base is pretrained on the plain style plus a random tenth of every other style, so it has
real zero-shot skill on every cell (it draws every style, and the digits badly). Experts are PEFT
LoRA adapters on the attention, convolution and linear layers.

Example:
    >>> import torch
    >>> from mergezoo.eval.benchmarks.digits_diffusion.model import new_unet, sample
    >>> unet = new_unet(seed=0)
    >>> images = sample(unet, torch.tensor([3, 4]), ["plain", "inverted"], steps=2, seed=0)
    >>> tuple(images.shape)
    (2, 1, 8, 8)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from mergezoo.eval.benchmarks.digits_diffusion.data import IMAGE_SIZE, STYLE_NAMES
from mergezoo.errors import BenchmarkDataError

logger = logging.getLogger(__name__)

N_DIGITS = 10
N_STYLES = len(STYLE_NAMES)
COND_DIM = N_DIGITS + N_STYLES

#: Modules that LoRA experts adapt: attention projections, ResNet convolutions, the
#: conditioning and timestep MLPs and the cross-attention input projection.
LORA_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2",
    "linear_1", "linear_2", "encoder_hid_proj", "proj_in", "proj_out",
)

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
}


def unet_config() -> dict:
    """The UNet2DConditionModel configuration (about 0.3 M parameters)."""
    return {
        "sample_size": IMAGE_SIZE,
        "in_channels": 1,
        "out_channels": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
        "attention_head_dim": 2,
        "encoder_hid_dim": COND_DIM,
        "encoder_hid_dim_type": "text_proj",
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": COND_DIM,
    }


def new_unet(seed: int) -> UNet2DConditionModel:
    """A freshly initialised UNet (deterministic for a seed)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config())


def style_ids(styles: Sequence[str]) -> torch.Tensor:
    """Indices of style names into STYLE_NAMES."""
    try:
        return torch.tensor([STYLE_NAMES.index(s) for s in styles], dtype=torch.long)
    except ValueError as err:
        raise BenchmarkDataError(f"unknown style in {list(styles)}; expected {STYLE_NAMES}") from err


def conditioning(digits: torch.Tensor, styles: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class_labels, encoder_hidden_states)`` for a batch of (digit, style) pairs."""
    d = F.one_hot(digits.long(), N_DIGITS).float()
    s = F.one_hot(style_ids(styles), N_STYLES).float()
    class_labels = torch.cat([d, s], dim=1)
    tokens = torch.zeros(len(digits), 2, COND_DIM)
    tokens[:, 0, :N_DIGITS] = d
    tokens[:, 1, N_DIGITS:] = s
    return class_labels, tokens


def denoise(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, digits: torch.Tensor,
            styles: Sequence[str]) -> torch.Tensor:
    """One UNet call with the benchmark's conditioning (works on a PEFT-wrapped UNet too)."""
    class_labels, tokens = conditioning(digits, styles)
    return unet(x, t, encoder_hidden_states=tokens, class_labels=class_labels).sample


@dataclass(frozen=True)
class TrainSpec:
    """How long and how fast to train."""

    steps: int
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0


def train(unet: torch.nn.Module, images: torch.Tensor, digits: torch.Tensor,
          styles: Sequence[str], spec: TrainSpec, seed: int) -> list[float]:
    """Train ``unet`` (its trainable parameters only) with the DDPM noise-prediction loss on
    images in [0, 1]. Returns the loss of every step. Deterministic for a seed on CPU."""
    if len(images) == 0:
        raise BenchmarkDataError("no training images")
    gen = torch.Generator().manual_seed(seed)
    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 20) * max(0.05, 1.0 - i / max(1, spec.steps)))
    style_arr = list(styles)
    x_all = images * 2.0 - 1.0
    unet.train()
    losses: list[float] = []
    for _ in range(spec.steps):
        idx = torch.randint(0, len(x_all), (min(spec.batch_size, len(x_all)),), generator=gen)
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        pred = denoise(unet, xt, t, digits[idx], [style_arr[i] for i in idx.tolist()])
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        losses.append(loss.item())
    unet.eval()
    return losses


@torch.no_grad()
def sample(unet: torch.nn.Module, digits: torch.Tensor, styles: Sequence[str], steps: int = 10,
           seed: int = 0, noise: torch.Tensor | None = None, chunk: int = 512) -> torch.Tensor:
    """Generate one image per (digit, style) with ``steps`` deterministic DDIM steps (eta 0);
    values in [0, 1]. The starting noise is ``noise`` if given (one (1, 8, 8) slice per row, so
    callers can batch many prompts, each with its own noise), else drawn from ``seed``."""
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    if noise is None:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(digits), 1, IMAGE_SIZE, IMAGE_SIZE), generator=gen)
    elif noise.shape != (len(digits), 1, IMAGE_SIZE, IMAGE_SIZE):
        raise BenchmarkDataError(f"noise of shape {tuple(noise.shape)} for {len(digits)} prompts")
    class_labels, tokens = conditioning(digits, styles)  # the same for every step
    unet.eval()
    out = []
    # rows are independent (deterministic DDIM), so a long batch runs in chunks whose
    # activations stay in cache (about 20% faster on a CPU than one batch of thousands)
    for start in range(0, len(digits), chunk):
        rows = slice(start, start + chunk)
        x = noise[rows]
        for t in sched.timesteps:
            eps = unet(x, t.expand(len(x)), encoder_hidden_states=tokens[rows],
                       class_labels=class_labels[rows]).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        out.append(x)
    return (torch.cat(out).clamp(-1.0, 1.0) + 1.0) / 2.0


class EnsembleUNet(torch.nn.Module):
    """Several UNets sampled as one: the noise prediction is the mean of the members'
    (the "ensemble of the experts" baseline of a generation benchmark).

    Example:
        >>> pair = EnsembleUNet([new_unet(seed=0), new_unet(seed=1)])
        >>> tuple(sample(pair, torch.tensor([1]), ["plain"], steps=2).shape)
        (1, 1, 8, 8)
    """

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if not members:
            raise BenchmarkDataError("an ensemble needs at least one model")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, **kwargs: torch.Tensor
                ) -> UNet2DConditionOutput:
        eps = self.members[0](x, timestep, **kwargs).sample
        for member in self.members[1:]:
            eps = eps + member(x, timestep, **kwargs).sample
        return UNet2DConditionOutput(sample=eps / len(self.members))


def save_unet(unet: UNet2DConditionModel, out_dir: Path) -> None:
    """Save a plain UNet folder (config.json + diffusion_pytorch_model.safetensors) with the
    DDIM scheduler config beside it (scheduler_config.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir, safe_serialization=True)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(out_dir)


def load_unet(path: Path | str) -> UNet2DConditionModel:
    """Load a UNet folder written by `save_unet` (or any diffusers UNet2DConditionModel)."""
    unet = UNet2DConditionModel.from_pretrained(str(path))
    unet.eval()
    return unet


def lora_config(rank: int, base_model: str | None = None) -> "LoraConfig":
    """The PEFT LoRA configuration of the experts (rank ``rank``, alpha = rank)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, init_lora_weights=True,
                      target_modules=list(LORA_TARGETS), base_model_name_or_path=base_model)


def add_lora(unet: UNet2DConditionModel, rank: int, seed: int,
             base_model: str | None = None) -> torch.nn.Module:
    """Wrap ``unet`` in a PEFT model with fresh LoRA adapters (deterministic for a seed); only
    the LoRA weights are trainable."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(unet, lora_config(rank, base_model))
    # get_peft_model overwrites it with the module's (empty) name_or_path
    model.peft_config["default"].base_model_name_or_path = base_model
    return model


def resolve_base(adapter_dir: Path, base_ref: str) -> Path:
    """The folder of an adapter's base: ``base_ref`` as a path, else a sibling folder of the
    adapter named ``base_ref`` (a local zoo keeps repos side by side)."""
    for candidate in (Path(base_ref).expanduser(), adapter_dir.parent / base_ref,
                      adapter_dir.parent / base_ref.split("/")[-1]):
        if (candidate / "config.json").is_file():
            return candidate
    raise BenchmarkDataError(f"{adapter_dir}: its base model {base_ref!r} is neither a folder "
                             "nor a sibling repo folder")


def load_generator(path: Path | str) -> UNet2DConditionModel:
    """A UNet ready to sample from: a UNet folder as it is, or a PEFT adapter folder merged into
    its base (``base_model_name_or_path`` of adapter_config.json)."""
    import json

    from peft import PeftModel

    folder = Path(path)
    adapter_cfg = folder / "adapter_config.json"
    if not adapter_cfg.is_file():
        return load_unet(folder)
    base_ref = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    if not base_ref:
        raise BenchmarkDataError(f"{folder}: adapter_config.json names no base model")
    base = load_unet(resolve_base(folder, str(base_ref)))
    merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    merged.eval()
    return merged
