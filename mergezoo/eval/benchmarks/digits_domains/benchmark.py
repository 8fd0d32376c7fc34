"""`digits-domains`: image classification over (digit group x domain) cells.

Data: scikit-learn's bundled digits (1,797 real 8x8 scans), upsampled to 16x16 and rendered in
six domains by deterministic transforms: plain, inverted, rotated (90 degrees), noisy (Gaussian
noise seeded by the source image), blurred (Gaussian blur) and thick (grey dilation). Digits form
five groups of two ({0,1}, {2,3}, ...). The 30 cells are group x domain; the five held-in cells
are the "diagonal" group i x (i-th non-plain domain): group0-inverted, group1-rotated,
group2-noisy, group3-blurred, group4-thick. Every other cell is held out.

Splits are made per SOURCE image (stratified by digit), so no test or validation image, in any
domain rendering, is in any train set.

Models: a tiny `ViTForImageClassification` (random init from a ViTConfig), "pretrained" on the
plain rendering of all train digits (the base). Experts are fully fine-tuned on one held-in cell
with the 10-way classifier head frozen and shared with the base (as the paper does with CLIP
text-embedding heads), for 3 seeds; a multitask model on all held-in cells; an oracle per held-out
cell. Preprocessing: grey pixels in [0, 1], normalised as (x - 0.5) / 0.5, shape (N, 1, 16, 16).

Example:
    >>> bench = get_benchmark("digits-domains", size="tiny")               # doctest: +SKIP
    >>> zoo = bench.build()
    >>> bench.evaluate(zoo.model_path("expert", "group1-rotated", seed=0), cells=["group1-rotated"])
    {'group1-rotated': 0.98}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mergezoo.errors import BenchmarkError
from mergezoo.eval.benchmark import Benchmark
from mergezoo.eval.registry import register_benchmark
from mergezoo.eval.spec import ID_COLUMN, LABEL_COLUMN, BenchmarkSpec, Cell, grid_cells
from mergezoo.eval.training import TrainRecipe, deterministic

if TYPE_CHECKING:
    import torch
    from datasets import Dataset, DatasetDict

    from mergezoo.eval.training import JobRunner
    from mergezoo.eval.zoo_writer import ZooWriter

log = logging.getLogger(__name__)

NAME = "digits-domains"
DOMAINS = ["plain", "inverted", "rotated", "noisy", "blurred", "thick"]
GROUPS = {f"group{i}": [2 * i, 2 * i + 1] for i in range(5)}
HELD_IN = [f"{g}-{d}" for g, d in zip(GROUPS, DOMAINS[1:])]
IMAGE_SIZE = 16
HEAD_PREFIX = "classifier."
VERSION = 1

# Build parameters per size. `train_per_cell` caps each cell's train split (None: all of it).
SIZE_PARAMS: dict[str, dict[str, Any]] = {
    "tiny": {"model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 64},
             "train_per_cell": 80, "eval_per_cell": 40, "seeds": [0, 1, 2],
             "pretrain": {"lr": 2e-3, "epochs": 20, "batch_size": 32},
             "expert": {"lr": 1e-3, "epochs": 5, "batch_size": 16},
             "multitask": {"lr": 1e-3, "epochs": 5, "batch_size": 16}},
    "default": {"model": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                          "intermediate_size": 128},
                "train_per_cell": None, "eval_per_cell": None, "seeds": [0, 1, 2],
                "pretrain": {"lr": 1e-3, "epochs": 40, "batch_size": 64},
                "expert": {"lr": 5e-4, "epochs": 10, "batch_size": 32},
                "multitask": {"lr": 5e-4, "epochs": 10, "batch_size": 32}},
}
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train / validation / test, per digit, over source images
SPLIT_SEED = 0
NOISE_STD = 0.3


# -- rendering ------------------------------------------------------------------------------
def load_sources() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as float32 16x16 images in [0, 1] and their labels."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0
    up = np.stack([zoom(img, IMAGE_SIZE / 8, order=1) for img in images])
    return np.clip(up, 0.0, 1.0).astype(np.float32), digits.target.astype(np.int64)


def render(image: np.ndarray, domain: str, source_id: int) -> np.ndarray:
    """Render one plain 16x16 image in `domain` (deterministic: noise is seeded by source_id)."""
    from scipy import ndimage

    if domain == "plain":
        out = image
    elif domain == "inverted":
        out = 1.0 - image
    elif domain == "rotated":
        out = np.rot90(image, k=1)
    elif domain == "noisy":
        rng = np.random.default_rng(10_000 + source_id)
        out = image + rng.normal(0.0, NOISE_STD, image.shape)
    elif domain == "blurred":
        out = ndimage.gaussian_filter(image, sigma=1.2)
        out = out / max(float(out.max()), 1e-6)
    elif domain == "thick":
        out = ndimage.grey_dilation(image, size=(3, 3))
    else:
        raise BenchmarkError(f"{NAME}: unknown domain {domain!r}; domains: {DOMAINS}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def split_sources(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Assign every source image to train / validation / test, stratified by digit."""
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for digit in range(10):
        ids = rng.permutation(np.flatnonzero(labels == digit))
        n_train = int(round(SPLIT_FRACTIONS[0] * len(ids)))
        n_val = int(round(SPLIT_FRACTIONS[1] * len(ids)))
        parts["train"] += ids[:n_train].tolist()
        parts["validation"] += ids[n_train:n_train + n_val].tolist()
        parts["test"] += ids[n_train + n_val:].tolist()
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in parts.items()}


def to_tensor(images: list[Any]) -> torch.Tensor:
    """PIL grey images (or arrays in [0, 255]) -> normalised float tensor (N, 1, 16, 16)."""
    import torch

    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    return torch.from_numpy((arr - 0.5) / 0.5).unsqueeze(1)


@register_benchmark(NAME)
class DigitsDomains(Benchmark):
    """Digit groups x rendering domains, a tiny ViT base, full fine-tuned experts, frozen head."""

    eval_threads = 1
    data_description = (
        "Source: scikit-learn's bundled digits (`sklearn.datasets.load_digits`), a copy of the "
        "test set of the UCI Optical Recognition of Handwritten Digits data set (Alpaydin & "
        "Kaynak, 1998), upsampled to 16x16 and rendered by deterministic transforms.")
    data_license = "cc-by-4.0"

    def __init__(self, size: str = "default") -> None:
        if size not in SIZE_PARAMS:
            raise BenchmarkError(f"{NAME}: unknown size {size!r}; sizes: {sorted(SIZE_PARAMS)}")
        factors = {"group": list(GROUPS), "domain": list(DOMAINS)}
        spec = BenchmarkSpec(
            name=NAME, factors=factors, cells=grid_cells(factors, HELD_IN),
            task="image-classification", metric="accuracy",
            description=("scikit-learn digits (16x16) in 6 rendering domains x 5 digit groups; "
                         "tiny ViT pretrained on plain digits; experts on diagonal cells with a "
                         "frozen shared head."),
            params={**SIZE_PARAMS[size], "groups": GROUPS, "split_fractions": list(SPLIT_FRACTIONS),
                    "split_seed": SPLIT_SEED, "noise_std": NOISE_STD, "image_size": IMAGE_SIZE},
            size=size, version=VERSION)
        super().__init__(spec)
        self._tensors: dict[tuple[str, str], tuple[Any, Any]] = {}

    # -- data -------------------------------------------------------------------------------
    def make_data(self) -> dict[str, DatasetDict]:
        import datasets
        from PIL import Image

        images, labels = load_sources()
        splits = split_sources(labels)
        params = self.spec.params
        features = datasets.Features({
            "image": datasets.Image(),
            LABEL_COLUMN: datasets.ClassLabel(names=[str(d) for d in range(10)]),
            ID_COLUMN: datasets.Value("int64"),
            "group": datasets.Value("string"), "domain": datasets.Value("string")})
        out: dict[str, DatasetDict] = {}
        for cell in self.cells:
            group, domain = cell.factors["group"], cell.factors["domain"]
            dd = {}
            for split, ids in splits.items():
                ids = ids[np.isin(labels[ids], GROUPS[group])]
                cap = params["train_per_cell"] if split == "train" else params["eval_per_cell"]
                if cap is not None:
                    ids = ids[:cap]
                rows = {"image": [Image.fromarray(np.round(render(images[i], domain, int(i)) * 255)
                                                  .astype(np.uint8), mode="L") for i in ids],
                        LABEL_COLUMN: labels[ids].tolist(), ID_COLUMN: ids.tolist(),
                        "group": [group] * len(ids), "domain": [domain] * len(ids)}
                dd[split] = datasets.Dataset.from_dict(rows, features=features, split=split)
            out[cell.name] = datasets.DatasetDict(dd)
        return out

    def tensors(self, cell: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values, labels) of one cell's split, cached on the object."""
        import torch

        key = (cell, split)
        if key not in self._tensors:
            ds = self.dataset(cell, split)
            self._tensors[key] = (to_tensor(ds["image"]),
                                  torch.tensor(ds[LABEL_COLUMN], dtype=torch.long))
        return self._tensors[key]

    def pretrain_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain renderings of every train source image (all digit groups)."""
        import torch

        parts = [self.tensors(c.name, "train") for c in self.cells if c.factors["domain"] == "plain"]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    # -- models -----------------------------------------------------------------------------
    def new_model(self) -> Any:
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(image_size=IMAGE_SIZE, patch_size=4, num_channels=1, num_labels=10,
                           id2label={i: str(i) for i in range(10)},
                           label2id={str(i): i for i in range(10)},
                           **self.spec.params["model"])
        return ViTForImageClassification(config)

    def load_model(self, model_dir: str | Path) -> Any:
        from transformers import ViTForImageClassification

        try:
            model = ViTForImageClassification.from_pretrained(str(model_dir))
        except (OSError, ValueError) as err:
            raise BenchmarkError(f"{model_dir}: cannot load a ViT image classifier: {err}") from err
        return model.float().eval()  # merges may be saved in bf16/fp16; score in float32

    def predict(self, model: Any, dataset: Dataset, cell: Cell) -> list[int]:
        import torch

        x = to_tensor(dataset["image"])
        with torch.no_grad():
            return [int(p) for b in range(0, len(x), 256)
                    for p in model(pixel_values=x[b:b + 256]).logits.argmax(-1)]

    def score(self, model: Any, dataset: Dataset, cell: Cell) -> float:
        """Accuracy; uses the cached tensors when `dataset` is this benchmark's own split."""
        import torch

        # only the dataset's own split is looked up (the bench checks that tuning reads no
        # test data, and an identity check against every split would read them all)
        split = str(dataset.split) if dataset.split is not None else None
        if split in ("test", "validation", "train") and dataset is self.dataset(cell, split):
            x, y = self.tensors(cell.name, split)
            with torch.no_grad():
                pred = torch.cat([model(pixel_values=x[b:b + 256]).logits.argmax(-1)
                                  for b in range(0, len(x), 256)])
            return float((pred == y).float().mean()) if len(y) else 0.0
        return super().score(model, dataset, cell)

    def _fit(self, model: Any, x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe) -> Any:
        import torch

        with deterministic(recipe.seed) as gen:
            model.train()
            for name, p in model.named_parameters():
                p.requires_grad_(not name.startswith(recipe.frozen))
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
            steps = recipe.epochs * max(1, -(-len(x) // recipe.batch_size))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / (steps + 1))
            for _ in range(recipe.epochs):
                order = torch.randperm(len(x), generator=gen)
                for b in range(0, len(x), recipe.batch_size):
                    idx = order[b:b + recipe.batch_size]
                    loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
            for p in model.parameters():
                p.requires_grad_(True)
        return model.eval()

    def _recipe(self, kind: str, seed: int, cells: list[str], frozen: tuple[str, ...]) -> TrainRecipe:
        p = self.spec.params[kind]
        return TrainRecipe(lr=p["lr"], epochs=p["epochs"], batch_size=p["batch_size"], seed=seed,
                           frozen=frozen, trained_on=tuple(cells),
                           extra={"schedule": "linear decay", "loss": "cross-entropy",
                                  "preprocessing": "grey [0,1], (x-0.5)/0.5, 1x16x16"})

    def _cell_data(self, cells: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        parts = [self.tensors(c, "train") for c in cells]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def train_zoo(self, writer: ZooWriter, data: dict[str, DatasetDict],
                  jobs: JobRunner | None = None) -> None:
        # trains in this process (a few minutes in all); `jobs` speeds up its sanity numbers
        import copy

        import torch

        # the base: random init (seed 0), pretrained on plain renderings of every train digit
        recipe = self._recipe("pretrain", 0, [c.name for c in self.cells
                                              if c.factors["domain"] == "plain"], ())
        with deterministic(0):
            base = self.new_model()
        base = self._fit(base, *self.pretrain_tensors(), recipe)
        base_name = writer.repo_name("base")
        writer.save_model(base, role="base", recipe=recipe.to_dict(), trained_on=recipe.trained_on,
                          summary="Random-init ViT pretrained on the plain domain, all digits.")
        base_state = copy.deepcopy(base.state_dict())

        def from_base() -> Any:
            model = self.new_model()
            model.load_state_dict(base_state)
            return model

        def train(kind: str, role: str, cells: list[str], seed: int, cell: str | None) -> None:
            recipe = self._recipe(kind, seed, cells, (HEAD_PREFIX,))
            model = self._fit(from_base(), *self._cell_data(cells), recipe)
            head = model.state_dict()
            if not all(torch.equal(head[k], base_state[k]) for k in head if k.startswith(HEAD_PREFIX)):
                raise BenchmarkError(f"{NAME}: the frozen head changed while training {role} {cell}")
            writer.save_model(model, role=role, cell=cell, seed=seed, recipe=recipe.to_dict(),
                              base_model=base_name, trained_on=cells)

        for seed in self.spec.params["seeds"]:
            for cell in self.held_in_cells:
                train("expert", "expert", [cell.name], seed, cell.name)
        train("multitask", "multitask", [c.name for c in self.held_in_cells], 0, None)
        for cell in self.held_out_cells:
            train("expert", "oracle", [cell.name], 0, cell.name)
