"""What the Space does with one kind of model: load it, put merged weights into it, and run it.

A handler wraps a built-in benchmark's own helpers (its `load_model`, `module` and
`with_weights`, preprocessing and sampler), so the Space runs a model exactly as the benchmark scores it:

- `ImageClassifierHandler` (digits-domains): a grey image in, label probabilities out;
- `TextClassifierHandler` (text-styles): a sentence and a task in, label probabilities out;
- `GeneratorHandler` (digits-diffusion): a digit, a style and a seed in, images out.

Example:
    >>> bench = get_benchmark("digits-domains", size="tiny")           # doctest: +SKIP
    >>> handler = handler_for(bench)
    >>> model = handler.load(zoo.model_path("base"))
    >>> handler.probabilities(model, image)                             # {"0": 0.91, ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergezoo.errors import BenchmarkError, SpaceInputError

if TYPE_CHECKING:
    from PIL import Image

    from mergezoo.eval.benchmark import Benchmark

IMAGE_CLASSIFICATION = "image-classification"
TEXT_CLASSIFICATION = "text-classification"
IMAGE_GENERATION = "image-generation"
#: generated images are tiny (8x8); shown enlarged with nearest-neighbour pixels
DISPLAY_SIZE = 96


class Handler:
    """Loading and weight replacement through the benchmark; subclasses run the model."""

    kind: str = ""

    def __init__(self, bench: Benchmark) -> None:
        self.bench = bench

    def load(self, path: str | Path) -> Any:
        from mergezoo.eval.training import quiet_loading

        with quiet_loading():
            return self.bench.load_model(path)

    def module(self, model: Any) -> Any:
        """The torch module whose weights a merge replaces."""
        return self.bench.module(model)

    def with_weights(self, model: Any, state_dict: dict[str, Any]) -> Any:
        return self.bench.with_weights(model, state_dict)


class ImageClassifierHandler(Handler):
    """digits-domains: grey images, resized to the model's input size, the benchmark's
    normalisation (`to_tensor`), softmax over the model's labels."""

    kind = IMAGE_CLASSIFICATION

    def probabilities(self, model: Any, image: Image.Image) -> dict[str, float]:
        import torch
        from PIL import Image as PILImage

        from mergezoo.eval.benchmarks.digits_domains.benchmark import to_tensor

        size = int(model.config.image_size)
        grey = image.convert("L")
        if grey.size != (size, size):
            grey = grey.resize((size, size), PILImage.Resampling.BILINEAR)
        with torch.no_grad():
            logits = model(pixel_values=to_tensor([grey])).logits[0]
        probs = torch.softmax(logits.float(), -1).tolist()
        names = model.config.id2label
        return {str(names.get(i, i)): float(p) for i, p in enumerate(probs)}


class TextClassifierHandler(Handler):
    """text-styles: cosine similarity of the sentence embedding to the base's frozen
    label-name embeddings of a task, times the benchmark's logit scale, softmax."""

    kind = TEXT_CLASSIFICATION

    @property
    def tasks(self) -> list[str]:
        return list(self.bench.factors["task"])

    def probabilities(self, model: Any, text: str, task: str) -> dict[str, float]:
        import torch

        from mergezoo.eval.benchmarks.text_styles.model import LOGIT_SCALE, embed
        from mergezoo.eval.benchmarks.text_styles.vocab import TASKS

        if task not in self.tasks:
            raise SpaceInputError(f"task {task!r} is not one of {self.tasks}")
        labels = self.bench.label_embeddings()[task]
        logits = (embed(model, [text]) @ labels.T)[0] * LOGIT_SCALE
        probs = torch.softmax(logits, -1).tolist()
        return {name: float(p) for name, p in zip(TASKS[task].labels, probs)}


class GeneratorHandler(Handler):
    """digits-diffusion: the benchmark's sampler (`model.sample`, deterministic DDIM with the
    benchmark's number of steps, as its scoring samples), one image per requested digit,
    shown enlarged."""

    kind = IMAGE_GENERATION

    @property
    def styles(self) -> list[str]:
        return ["plain"] + [s for s in self.bench.factors["style"] if s != "plain"]

    def generate(self, model: Any, digit: int, style: str, seed: int, n: int) -> list[Image.Image]:
        import numpy as np
        from PIL import Image as PILImage

        if style not in self.styles:
            raise SpaceInputError(f"style {style!r} is not one of {self.styles}")
        import torch

        from mergezoo.eval.benchmarks.digits_diffusion.model import sample

        images = sample(model, torch.tensor([int(digit)] * n), [style] * n,
                        steps=self.bench.spec.params["sample_steps"], seed=int(seed))
        out = []
        for img in images:
            arr = (img[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            out.append(PILImage.fromarray(arr, mode="L").resize((DISPLAY_SIZE, DISPLAY_SIZE),
                                                                PILImage.Resampling.NEAREST))
        return out


_HANDLERS = {IMAGE_CLASSIFICATION: ImageClassifierHandler,
             TEXT_CLASSIFICATION: TextClassifierHandler,
             IMAGE_GENERATION: GeneratorHandler}
#: the benchmarks whose models the Space knows how to run
SUPPORTED = {"digits-domains", "digits-diffusion", "text-styles"}


def handler_for(bench: Benchmark) -> Handler:
    """The handler for a built-in benchmark's models (by its task)."""
    if bench.name not in SUPPORTED:
        raise BenchmarkError(f"the Space cannot run {bench.name!r} models; it runs "
                             f"{', '.join(sorted(SUPPORTED))}")
    return _HANDLERS[bench.spec.task](bench)
