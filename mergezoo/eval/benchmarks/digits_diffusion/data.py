"""Data of the `digits-diffusion` benchmark: scikit-learn's real 8x8 digits, at their native
resolution (cheap to generate on a CPU), rendered in several styles by deterministic transforms, split per (digit group, style) cell.

The 1,797 images are split once, per digit, into train / validation / test image indices, and
every style renders the same split, so no test image (in any style) is in any train set.
Pixel values are floats in [0, 1]; the diffusion model works on ``2 * x - 1``.

Example:
    >>> from mergezoo.eval.benchmarks.digits_diffusion.data import STYLES, cell_dataset, image_splits
    >>> splits = image_splits(seed=0)
    >>> ds = cell_dataset((0, 1, 2), "inverted", "train", splits)
    >>> ds.column_names
    ['image', 'label', 'style', 'source_id']
    >>> len(ds[0]["image"]) == 8 * 8
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, List, Value

from mergezoo.errors import BenchmarkDataError

IMAGE_SIZE = 8
SPLITS = ("train", "validation", "test")


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x


def _inverted(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def _rotated(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, k=1, dims=(-2, -1))


def _thick(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(F.pad(x, (0, 1, 0, 1)), kernel_size=2, stride=1)


def _framed(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[..., 0, :] = 1.0
    out[..., -1, :] = 1.0
    out[..., :, 0] = 1.0
    out[..., :, -1] = 1.0
    return out


#: Style name -> transform of a (N, 1, 8, 8) float tensor in [0, 1]. "plain" comes first: the
#: base model is pretrained on it and it is not part of the benchmark grid.
STYLES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "plain": _plain,
    "inverted": _inverted,
    "rotated": _rotated,
    "thick": _thick,
    "framed": _framed,
}
STYLE_NAMES: tuple[str, ...] = tuple(STYLES)


@dataclass(frozen=True)
class ImageSplits:
    """Indices into scikit-learn's digits for each split (disjoint, stratified by digit)."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]

    def get(self, split: str) -> tuple[int, ...]:
        if split not in SPLITS:
            raise BenchmarkDataError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)


@lru_cache(maxsize=1)
def load_digits_8() -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 scikit-learn digits as a (N, 1, 8, 8) float tensor in [0, 1], and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images.clamp(0.0, 1.0), np.asarray(bunch.target, dtype=np.int64)


def image_splits(seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15),
                 per_digit_cap: int | None = None) -> ImageSplits:
    """Split the digits, per digit class, into train / validation / test index sets.

    ``per_digit_cap`` keeps at most that many images per digit (before splitting), which the
    ``tiny`` size uses to stay fast.
    """
    _, labels = load_digits_8()
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        idx = idx[rng.permutation(len(idx))]
        if per_digit_cap is not None:
            idx = idx[:per_digit_cap]
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts["train"] += idx[:n_train].tolist()
        parts["validation"] += idx[n_train:n_train + n_val].tolist()
        parts["test"] += idx[n_train + n_val:].tolist()
    return ImageSplits(**{s: tuple(sorted(v)) for s, v in parts.items()})


def render(images: torch.Tensor, style: str) -> torch.Tensor:
    """Render (N, 1, 8, 8) images in [0, 1] in ``style``."""
    if style not in STYLES:
        raise BenchmarkDataError(f"unknown style {style!r}; expected one of {STYLE_NAMES}")
    return STYLES[style](images)


_FEATURES = Features({
    "image": List(Value("float32")),
    "label": Value("int64"),
    "style": Value("string"),
    "source_id": Value("int64"),
})


def cell_dataset(digits: Sequence[int], style: str, split: str,
                 splits: ImageSplits, cap: int | None = None) -> Dataset:
    """The real images of ``digits`` from ``split``, rendered in ``style``, as a Dataset with
    columns image (64 floats, row-major), label (the digit), style and source_id (the index
    into scikit-learn's digits, shared by every rendering of an image)."""
    images, labels = load_digits_8()
    wanted = set(int(d) for d in digits)
    idx = [i for i in splits.get(split) if int(labels[i]) in wanted][:cap]
    rendered = render(images[idx], style) if idx else images[:0]
    return Dataset.from_dict({
        "image": rendered.reshape(len(idx), -1).numpy().astype(np.float32).tolist(),
        "label": [int(labels[i]) for i in idx],
        "style": [style] * len(idx),
        "source_id": idx,
    }, features=_FEATURES)


def dataset_tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 1, 8, 8), digits (N,) and style names of a cell Dataset."""
    cols = ds.with_format("numpy")[:]
    images = torch.from_numpy(np.asarray(cols["image"], dtype=np.float32))
    images = images.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return images, torch.as_tensor(np.asarray(cols["label"]), dtype=torch.long), list(ds["style"])
