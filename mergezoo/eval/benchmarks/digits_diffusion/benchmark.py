"""`digits-diffusion`: image generation over (digit group x style) cells.

Data: scikit-learn's 1,797 real 8x8 digits rendered in styles by deterministic transforms
(`.data`). The grid is digit group x non-plain style; held-in cells are the diagonal group i x
style i.

The paper's regime in miniature: the base is pretrained broadly, on the plain style (all digits,
train split) plus a random `pretrain_mix` (10%) of every other style's train split, so it has
real zero-shot skill on every cell (it draws every style, and the digits badly); experts are
gentle PEFT LoRA adapters of it (150 steps at lr 2e-3 at default size), close enough to it that
merging them works on held-in cells (benchmarks/calibrate_diffusion.py measures it).

Models (`.model`): a small diffusers UNet2DConditionModel conditioned on digit and style through
separate embeddings (saved folders load with ``from_pretrained``); experts are PEFT LoRA adapters
(adapter_config.json + adapter_model.safetensors, whose ``base_model_name_or_path`` is the base
repo) for 3 seeds; a multitask LoRA on all held-in cells; one oracle LoRA per held-out cell.

Metric: `judge_scores` (shipped in mergezoo/eval/metrics): for each row (prompt) of a cell's
split, `samples_per_prompt` images are generated for (its digit, the cell's style) with a few
deterministic DDIM steps from noise seeded by the cell, and a judge CNN trained on real rendered
digits (`.judge`) says which digit and which style it sees; the score is the fraction with both
right. `score_cells` generates every cell's images in one sampling loop.

Example:
    >>> from mergezoo.eval import get_benchmark                  # doctest: +SKIP
    >>> bench = get_benchmark("digits-diffusion", size="tiny")
    >>> zoo = build_zoo(bench)
    >>> bench.evaluate(zoo.model_path("expert", "group0-inverted", seed=0),
    ...                cells=["group0-inverted"])
    {'group0-inverted': 0.8}
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from mergezoo.errors import BenchmarkError
from mergezoo.eval.benchmark import Benchmark
from mergezoo.eval.registry import register_benchmark
from mergezoo.eval.spec import BenchmarkSpec, Cell, grid_cells
from mergezoo.eval.training import TrainRecipe, ZooFit, deterministic, zoo_fits

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from mergezoo.eval.benchmarks.digits_diffusion.model import TrainSpec
    from mergezoo.eval.training import JobRunner
    from mergezoo.eval.zoo_writer import ZooWriter

log = logging.getLogger(__name__)

NAME = "digits-diffusion"
VERSION = 3  # 2: LoRA adapters trained in vmap groups; 3: mixed base, gentle LoRAs, more images
ALL_GROUPS = {"group0": [0, 1, 2], "group1": [3, 4, 5], "group2": [6, 7], "group3": [8, 9]}
ALL_STYLES = ["inverted", "rotated", "thick", "framed"]

#: pretrain_mix: the fraction of every non-plain style's train split (all digits, a random
#: subset per style) mixed into the base's plain-style pretraining data. eval_per_cell: at most
#: that many validation / test prompts per cell (None: all of them); samples_per_prompt:
#: images generated per prompt, each from its own starting noise.
SIZE_PARAMS: dict[str, dict[str, Any]] = {
    "tiny": {"groups": ["group0", "group1"], "styles": ["inverted", "rotated"],
             "seeds": [0], "lora_rank": 8, "lora_groups": [4], "sample_steps": 8,
             "eval_per_cell": 16, "samples_per_prompt": 1, "pretrain_mix": 0.1,
             "pretrain": {"steps": 150, "batch_size": 32, "lr": 3e-3},
             "expert": {"steps": 60, "batch_size": 16, "lr": 6e-3},
             "multitask": {"steps": 80, "batch_size": 16, "lr": 6e-3},
             "judge": {"epochs": 2, "batch_size": 64, "lr": 3e-3}},
    "default": {"groups": list(ALL_GROUPS), "styles": ALL_STYLES,
                "seeds": [0, 1, 2], "lora_rank": 16, "lora_groups": [15, 9], "sample_steps": 10,
                "eval_per_cell": None, "samples_per_prompt": 2, "pretrain_mix": 0.1,
                "pretrain": {"steps": 800, "batch_size": 64, "lr": 2e-3},
                "expert": {"steps": 150, "batch_size": 16, "lr": 2e-3},
                "multitask": {"steps": 300, "batch_size": 16, "lr": 2e-3},
                "judge": {"epochs": 6, "batch_size": 64, "lr": 2e-3}},
}
SPLIT_SEED = 0


class _AdapterFolder:
    """Saves a PEFT model with a byte-stable adapter_config.json: PEFT writes `target_modules`
    from a set, whose order changes with the interpreter's hash seed."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def save_pretrained(self, path: str) -> None:
        import json

        self.model.save_pretrained(path)
        cfg_path = Path(path) / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        if isinstance(cfg.get("target_modules"), list):
            cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


@register_benchmark(NAME)
class DigitsDiffusion(Benchmark):
    """Digit groups x styles; a small conditional UNet base; LoRA experts; judged generations."""

    eval_threads = 1
    _transient = ("_data", "_judge")

    def __init__(self, size: str = "default") -> None:
        if size not in SIZE_PARAMS:
            raise BenchmarkError(f"{NAME}: unknown size {size!r}; sizes: {sorted(SIZE_PARAMS)}")
        params = SIZE_PARAMS[size]
        factors = {"group": list(params["groups"]), "style": list(params["styles"])}
        held_in = [f"{g}-{s}" for g, s in zip(params["groups"], params["styles"])]
        spec = BenchmarkSpec(
            name=NAME, factors=factors, cells=grid_cells(factors, held_in),
            task="image-generation", metric="judge_scores",
            description=("scikit-learn digits (8x8) generated by a small conditional diffusers "
                         "UNet in non-plain styles x digit groups; base pretrained on plain "
                         "digits plus a random 10% of every other style; gentle LoRA experts on "
                         "diagonal cells; scored by a judge CNN trained on real rendered digits "
                         "(digit and style both right)."),
            params={**params, "digit_groups": {g: ALL_GROUPS[g] for g in params["groups"]},
                    "split_seed": SPLIT_SEED, "image_size": 8},
            size=size, version=VERSION)
        super().__init__(spec)
        self._judge: Any = None

    # -- data -------------------------------------------------------------------------------
    def _splits(self) -> Any:
        from mergezoo.eval.benchmarks.digits_diffusion.data import image_splits

        return image_splits(seed=SPLIT_SEED)

    def pretrain_data(self) -> tuple[Any, Any, list[str]]:
        """The base's pretraining data (images, digits, style names): the plain style's whole
        train split plus, for every other style, a random `pretrain_mix` of its train split
        (all digits; held-in and held-out cells alike, as a broad pretraining corpus would)."""
        import numpy as np
        import torch

        from mergezoo.eval.benchmarks.digits_diffusion.data import (STYLE_NAMES, cell_dataset,
                                                                    dataset_tensors)

        splits, mix = self._splits(), self.spec.params["pretrain_mix"]
        parts = [dataset_tensors(cell_dataset(range(10), "plain", "train", splits))]
        for i, style in enumerate(STYLE_NAMES[1:], start=1):
            ds = cell_dataset(range(10), style, "train", splits)
            keep = np.random.default_rng([SPLIT_SEED, i]).permutation(len(ds))
            keep = np.sort(keep[:int(round(mix * len(ds)))])
            parts.append(dataset_tensors(ds.select(keep.tolist())))
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                [st for p in parts for st in p[2]])

    def make_data(self) -> dict[str, DatasetDict]:
        from datasets import DatasetDict

        from mergezoo.eval.benchmarks.digits_diffusion.data import cell_dataset

        splits, cap = self._splits(), self.spec.params["eval_per_cell"]
        out = {}
        for cell in self.cells:
            digits = ALL_GROUPS[cell.factors["group"]]
            style = cell.factors["style"]
            out[cell.name] = DatasetDict({
                split: cell_dataset(digits, style, split, splits,
                                    cap=None if split == "train" else cap)
                for split in ("train", "validation", "test")})
        return out

    # -- the judge ----------------------------------------------------------------------------
    def judge_dir(self) -> Path:
        """Where this size's judge is cached (built on first use, deterministically)."""
        from mergezoo.eval.zoo_cache import cache_root

        return cache_root() / "judges" / f"{NAME}-{self.size}-{self.spec.definition_hash()[:12]}"

    def _judge_ready(self) -> bool:
        return (self.judge_dir() / "judge_config.json").is_file()

    def judge(self) -> Any:
        """The judge CNN, trained on real train-split digits in every style (cached on disk)."""
        from mergezoo.eval.benchmarks.digits_diffusion.judge import load_judge

        if self._judge is None:
            if not self._judge_ready():
                self._train_judge(self.judge_dir())
            self._judge = load_judge(str(self.judge_dir()))
        return self._judge

    def _train_judge(self, folder: Path) -> None:
        import os
        import uuid

        import torch

        from mergezoo.eval.benchmarks.digits_diffusion.data import (STYLE_NAMES, cell_dataset,
                                                                    dataset_tensors)
        from mergezoo.eval.benchmarks.digits_diffusion.judge import (JudgeSpec, save_judge,
                                                                     train_judge)

        splits = self._splits()

        def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            xs, ds, ss = [], [], []
            for i, style in enumerate(STYLE_NAMES):
                x, d, _ = dataset_tensors(cell_dataset(range(10), style, split, splits))
                xs.append(x)
                ds.append(d)
                ss.append(torch.full((len(d),), i, dtype=torch.long))
            return torch.cat(xs), torch.cat(ds), torch.cat(ss)

        with deterministic(0):
            judge, _ = train_judge(*tensors("train"), JudgeSpec(**self.spec.params["judge"]))
            x, d, s = tensors("test")
            pd, ps = judge.predict(x)
        extra = {"trained_on": "train split, all digits, every style",
                 "real_test_digit_accuracy": round(float((pd == d).float().mean()), 4),
                 "real_test_style_accuracy": round(float((ps == s).float().mean()), 4)}
        tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        save_judge(judge, tmp, extra)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process wrote it first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)

    def _copy_judge(self, dest: Path) -> None:
        import shutil

        shutil.copytree(self.judge_dir(), dest)
        (dest / "README.md").write_text(
            "---\nlicense: apache-2.0\ntags: [mergezoo, 'mergezoo-bench:digits-diffusion', "
            "'role:judge']\n---\n\n# digits-diffusion judge\n\nA small CNN (digit head, style "
            "head) trained on real scikit-learn digits rendered in every style (train split). "
            "Load with `mergezoo.eval.benchmarks.digits_diffusion.judge.load_judge(path)`; its "
            "accuracy on real test digits is in judge_config.json.\n")

    # -- models -----------------------------------------------------------------------------
    def load_model(self, model_dir: str | Path) -> Any:
        from mergezoo.eval.benchmarks.digits_diffusion.model import load_generator

        try:
            return load_generator(model_dir).float()
        except (OSError, ValueError, KeyError) as err:
            raise BenchmarkError(f"{model_dir}: cannot load a digits-diffusion UNet or LoRA "
                                 f"adapter: {err}") from err

    def ensemble(self, models: Sequence[Any]) -> Any:
        """The members sampled as one generator: its noise prediction is the mean of theirs."""
        from mergezoo.eval.benchmarks.digits_diffusion.model import EnsembleUNet

        return EnsembleUNet(list(models))

    def _prompts(self, dataset: Dataset, cell: Cell) -> tuple[Any, Any]:
        """What `score` generates for a cell's rows: each row's digit `samples_per_prompt`
        times, and their starting noise, drawn from a generator seeded by the cell, so a cell's
        images do not depend on which other cells share the batch (every model gets the same
        noise: differences between models are not sampling luck)."""
        import torch

        from mergezoo.eval.benchmarks.digits_diffusion.data import IMAGE_SIZE

        k = self.spec.params["samples_per_prompt"]
        digits = torch.tensor([int(d) for d in dataset["label"]], dtype=torch.long).repeat(k)
        seed = 1000 + [c.name for c in self.cells].index(cell.name)
        noise = torch.randn((len(digits), 1, IMAGE_SIZE, IMAGE_SIZE),
                            generator=torch.Generator().manual_seed(seed))
        return digits, noise

    def _judged(self, model: Any, batches: list[tuple[Cell, Any, Any]]) -> list[dict[str, list[int]]]:
        """Generate every (cell, digits, noise) batch in ONE sampling loop and judge it: the
        inputs of the `judge_scores` metric, per batch."""
        import torch

        from mergezoo.eval.benchmarks.digits_diffusion.data import STYLE_NAMES
        from mergezoo.eval.benchmarks.digits_diffusion.model import sample

        digits = torch.cat([d for _, d, _ in batches])
        styles = [c.factors["style"] for c, d, _ in batches for _ in range(len(d))]
        images = sample(model, digits, styles, steps=self.spec.params["sample_steps"],
                        noise=torch.cat([n for _, _, n in batches]))
        pd, ps = self.judge().predict(images)
        out, start = [], 0
        for cell, d, _ in batches:
            stop = start + len(d)
            out.append({"predictions": pd[start:stop].tolist(), "references": d.tolist(),
                        "style_predictions": ps[start:stop].tolist(),
                        "style_references": [STYLE_NAMES.index(cell.factors["style"])] * len(d)})
            start = stop
        return out

    def judge_predictions(self, model: Any, dataset: Dataset, cell: Cell) -> dict[str, list[int]]:
        """The judge's view of the images generated for every row of ``dataset`` (its digit,
        the cell's style, `samples_per_prompt` images each): the inputs of `judge_scores`."""
        return self._judged(model, [(cell, *self._prompts(dataset, cell))])[0]

    def score(self, model: Any, dataset: Dataset, cell: Cell) -> float:
        """judge_score: the fraction of generated images whose digit and style both match."""
        from mergezoo.eval.metrics import compute_metric

        return compute_metric(self.spec.metric, **self.judge_predictions(model, dataset, cell))

    def score_cells(self, model: Any, split: str = "test",
                    cells: Iterable[str] | None = None) -> dict[str, float]:
        """Every wanted cell's judge score, all cells' images generated in one sampling loop
        (the same images, cell by cell, as `score` makes)."""
        from mergezoo.eval.metrics import compute_metric

        wanted = [self.cell(c) for c in cells] if cells is not None else self.cells
        batches = [(c, *self._prompts(self.dataset(c, split), c)) for c in wanted]
        judged = self._judged(model, batches)
        return {c.name: float(compute_metric(self.spec.metric, **j))
                for c, j in zip(wanted, judged)}

    # -- the zoo ----------------------------------------------------------------------------
    def _recipe(self, kind: str, seed: int, cells: list[str]) -> TrainRecipe:
        p = self.spec.params[kind]
        return TrainRecipe(lr=p["lr"], epochs=0, batch_size=p["batch_size"], seed=seed,
                           trained_on=tuple(cells),
                           extra={"steps": p["steps"], "loss": "DDPM epsilon MSE",
                                  "scheduler": "squaredcos_cap_v2, 1000 steps",
                                  "lr_schedule": "warm-up 20 steps, linear decay",
                                  "adapter": None if kind == "pretrain" else
                                  {"type": "lora", "rank": self.spec.params["lora_rank"]}})

    def _fits(self) -> list[ZooFit]:
        """Every LoRA adapter of the zoo, in manifest order: experts (seed by seed, cell by
        cell), the multitask adapter, the oracles."""
        return zoo_fits([c.name for c in self.held_in_cells],
                        [c.name for c in self.held_out_cells], self.spec.params["seeds"])

    def _groups(self) -> list[list[int]]:
        """Indices into `_fits()` of the adapters trained together, one list per job. The
        experts and oracles (one schedule) are cut into groups of the sizes `lora_groups`
        (the last size repeats); the multitask adapter (twice the steps) trains alone and goes
        last, where it fills the time the smaller group leaves on two workers. The grouping
        is part of the definition (a member's floats depend on its group's batched kernels),
        never of the machine or the number of workers."""
        fits = self._fits()
        same = [i for i, f in enumerate(fits) if f.kind == "expert"]
        sizes = list(self.spec.params["lora_groups"])
        groups: list[list[int]] = []
        while same:
            size = sizes.pop(0) if len(sizes) > 1 else sizes[0]
            groups.append(same[:size])
            same = same[size:]
        return groups + [[i for i, f in enumerate(fits) if f.kind != "expert"]]

    def train_zoo(self, writer: ZooWriter, data: dict[str, DatasetDict],
                  jobs: JobRunner | None = None) -> None:
        from diffusers import DDIMScheduler

        from mergezoo.eval.benchmarks.digits_diffusion.model import (SCHEDULER_CONFIG, new_unet,
                                                                    train)
        from mergezoo.eval.training import JobRunner

        runner = jobs or JobRunner(1)
        # the judge (cached across builds) trains in a worker while the base pretrains here
        judge = None if self._judge_ready() else runner.submit(_train_judge_job, self)
        # base: plain style plus a random tenth of every other style, train split only
        started = time.perf_counter()
        with deterministic(0):
            base = new_unet(seed=0)
            train(base, *self.pretrain_data(), self._train_spec("pretrain"), seed=0)
        log.info("%s: base pretrained in %.1f s", NAME, time.perf_counter() - started)
        writer.save_model(base, role="base", recipe=self._recipe("pretrain", 0, []).to_dict(),
                          library_name="diffusers", also_save=[DDIMScheduler(**SCHEDULER_CONFIG)],
                          summary="A UNet2DConditionModel pretrained on plain digits (all 10, "
                          "train split) plus a random "
                          f"{self.spec.params['pretrain_mix']:.0%} of every other style's train "
                          "split. Load "
                          "with `UNet2DConditionModel.from_pretrained`; conditioning in "
                          "`mergezoo.eval.benchmarks.digits_diffusion.model.conditioning`.")
        if judge is not None:
            judge.result()
        # the judge is part of the zoo too (a folder with its own card)
        self._copy_judge(writer.root / f"{NAME}-judge")
        # the adapters: independent groups, each job seeded by its members, saved by the job
        fits, groups = self._fits(), self._groups()
        started = time.perf_counter()
        done = runner.map(_train_group, [(self, writer.detached(), [fits[i] for i in g])
                                         for g in groups])
        by_fit = {i: entry for g, entries in zip(groups, done) for i, entry in zip(g, entries)}
        writer.record(by_fit[i] for i in range(len(fits)))
        log.info("%s: %d LoRA adapters in %d groups trained in %.1f s on %d worker(s)", NAME,
                 len(fits), len(groups), time.perf_counter() - started, runner.workers)

    def _train_spec(self, kind: str) -> TrainSpec:
        from mergezoo.eval.benchmarks.digits_diffusion.model import TrainSpec

        p = self.spec.params[kind]
        return TrainSpec(steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"])




def _train_judge_job(bench: DigitsDiffusion) -> None:
    """Train and cache the judge (a worker-process job)."""
    bench.shared().judge()


def _train_group(job: tuple[DigitsDiffusion, ZooWriter, list[ZooFit]]) -> list[dict[str, Any]]:
    """Train one group of adapters of the zoo's saved base and save them into the zoo (a
    worker-process job); returns their manifest entries, in group order."""
    import torch

    from mergezoo.eval.benchmarks.digits_diffusion.data import dataset_tensors
    from mergezoo.eval.benchmarks.digits_diffusion.lora import LoraMember, train_lora_group
    from mergezoo.eval.benchmarks.digits_diffusion.model import load_unet

    bench, writer, fits = job
    bench = bench.shared()
    data = bench.data()
    base_name = writer.repo_name("base")
    base = load_unet(writer.root / base_name)
    members = []
    for fit in fits:
        tensors = [dataset_tensors(data[c]["train"]) for c in fit.cells]
        members.append(LoraMember(images=torch.cat([t[0] for t in tensors]),
                                  digits=torch.cat([t[1] for t in tensors]),
                                  styles=[st for t in tensors for st in t[2]], seed=fit.seed))
    started = time.perf_counter()
    with deterministic(0):
        models, _ = train_lora_group(base, members, bench._train_spec(fits[0].kind),
                                     bench.spec.params["lora_rank"], base_name)
    log.info("%s: trained %d adapter(s) together in %.1f s", NAME, len(fits),
             time.perf_counter() - started)
    for fit, model in zip(fits, models):
        recipe = bench._recipe(fit.kind, fit.seed, list(fit.cells)).to_dict()
        recipe["trained_together"] = len(fits)
        writer.save_model(_AdapterFolder(model), role=fit.role, cell=fit.cell, seed=fit.seed,
                          recipe=recipe, base_model=base_name, trained_on=list(fit.cells),
                          library_name="peft", summary=f"A PEFT LoRA adapter of `{base_name}`.")
    return writer.models
