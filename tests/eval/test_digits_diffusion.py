"""digits-diffusion at size tiny: a conditional UNet base (pretrained on plain digits plus a
tenth of every other style) loadable with diffusers, PEFT LoRA experts pointing at it, a judge
trained on real digits, disjoint splits, deterministic rebuild, experts beating the base on
their cells, batched scoring, the ensemble and in-memory merged weights."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard

from mergezoo.eval import ID_COLUMN, build_zoo, get_benchmark
from mergezoo.eval.benchmarks.digits_diffusion.data import (STYLE_NAMES, cell_dataset,
                                                            dataset_tensors, render)
from mergezoo.eval.benchmarks.digits_diffusion.model import conditioning, denoise
from mergezoo.eval.training import torch_threads
from mergezoo.eval.zoo_writer import hash_tree


@pytest.fixture(scope="module")
def diffusion_tiny(zoo_cache):
    bench = get_benchmark("digits-diffusion", size="tiny")
    return bench, build_zoo(bench, workers=2)


def test_styles_and_conditioning():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2:6, 3] = 1.0
    assert torch.equal(render(x, "inverted"), 1 - x)
    assert render(x, "framed")[0, 0, 0].min() == 1.0
    assert render(x, "thick").sum() > x.sum()
    labels, tokens = conditioning(torch.tensor([3]), ["rotated"])
    assert labels[0].nonzero().flatten().tolist() == [3, 12]  # digit 3, style index 2
    assert tokens.shape == (1, 2, 15) and tokens[0, 0, 3] == 1 and tokens[0, 1, 12] == 1


def test_base_loads_with_diffusers_and_experts_are_peft_adapters(diffusion_tiny):
    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    bench, zoo = diffusion_tiny
    base_dir = zoo.model_path("base")
    unet = UNet2DConditionModel.from_pretrained(str(base_dir))
    assert unet.config.class_embed_type == "projection"
    assert (base_dir / "scheduler_config.json").is_file()
    path = zoo.model_path("expert", "group0-inverted", seed=0)
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "digits-diffusion-base"
    assert (path / "adapter_model.safetensors").is_file()
    assert (zoo.root / cfg["base_model_name_or_path"]) == base_dir
    peft_model = PeftModel.from_pretrained(unet, str(path))
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())
    card = ModelCard.load(path / "README.md")
    for tag in ("mergezoo-bench:digits-diffusion", "cell:group0-inverted", "style:inverted"):
        assert tag in card.data.tags
    judge_cfg = json.loads((zoo.root / "digits-diffusion-judge" / "judge_config.json").read_text())
    assert judge_cfg["real_test_digit_accuracy"] > 0.5
    assert judge_cfg["real_test_style_accuracy"] > 0.9


def test_cells_and_splits_are_disjoint(diffusion_tiny):
    bench, zoo = diffusion_tiny
    train_ids = set()
    for cell in bench.cells:
        train_ids |= set(zoo.dataset(cell.name, "train")[ID_COLUMN])
    for cell in bench.cells:
        for split in ("validation", "test"):
            ids = set(zoo.dataset(cell.name, split)[ID_COLUMN])
            assert ids and not ids & train_ids
    held_out = {c.name for c in bench.held_out_cells}
    for m in zoo.models("expert") + zoo.models("multitask"):
        trained_on = ModelCard.load(m.path / "README.md").data.mergezoo["trained_on"]
        assert trained_on and not set(trained_on) & held_out


def test_base_pretrains_on_plain_plus_a_tenth_of_every_style():
    bench = get_benchmark("digits-diffusion", size="tiny")
    images, digits, styles = bench.pretrain_data()
    splits = bench._splits()
    for style in STYLE_NAMES:
        train_x, train_d, _ = dataset_tensors(cell_dataset(range(10), style, "train", splits))
        mine = images[[i for i, s in enumerate(styles) if s == style]]
        expected = len(train_x) if style == "plain" else round(0.1 * len(train_x))
        assert len(mine) == expected, style
        # every pretraining image is a train-split rendering in that style (no test image)
        flat = train_x.flatten(1)
        assert all((flat == row).all(1).any() for row in mine.flatten(1)), style
    assert len(digits) == len(styles) == len(images)
    # a random tenth: every digit of every style, not the first images of the split
    for style in STYLE_NAMES[1:]:
        assert len({int(d) for d, s in zip(digits, styles) if s == style}) == 10


def test_experts_beat_the_base_on_their_cells(diffusion_tiny):
    bench, zoo = diffusion_tiny
    rows = {r["cell"]: r for r in zoo.sanity["cells"]}
    for cell in bench.held_in_cells:
        assert rows[cell.name]["own_expert"] > rows[cell.name]["base"], rows[cell.name]


def test_batched_scores_match_cell_by_cell_scores(diffusion_tiny):
    """score_cells generates every cell's images in one loop; each cell's images are its own
    (seeded by the cell), so a cell scores the same alone, in the batch or via evaluate."""
    bench, zoo = diffusion_tiny
    path = zoo.model_path("expert", "group0-inverted", seed=0)
    model = bench.load_model(path)
    batched = bench.score_cells(model, "test")
    one_by_one = {c.name: bench.score(model, bench.dataset(c, "test"), c) for c in bench.cells}
    assert list(batched) == [c.name for c in bench.cells]
    n = len(bench.dataset(bench.cells[0], "test"))
    for name, value in one_by_one.items():
        # float rounding of a different batch may flip at most one borderline image
        assert abs(batched[name] - value) <= 1 / n + 1e-9, (name, batched[name], value)
    with torch_threads(bench.eval_threads):  # evaluate's threads: the same kernels
        alone = bench.score_cells(model, "test", ["group0-inverted"])
    assert bench.evaluate(path, cells=["group0-inverted"]) == alone


def test_ensemble_averages_noise_predictions(diffusion_tiny):
    bench, zoo = diffusion_tiny
    a = bench.load_model(zoo.model_path("expert", "group0-inverted", seed=0))
    b = bench.load_model(zoo.model_path("expert", "group1-rotated", seed=0))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t, digits, styles = torch.tensor([900, 500, 10]), torch.tensor([0, 4, 9]), ["inverted"] * 3
    with torch.no_grad():
        one = denoise(bench.ensemble([a]), x, t, digits, styles)
        torch.testing.assert_close(one, denoise(a, x, t, digits, styles))
        pair = denoise(bench.ensemble([a, b]), x, t, digits, styles)
        mean = (denoise(a, x, t, digits, styles) + denoise(b, x, t, digits, styles)) / 2
        torch.testing.assert_close(pair, mean)
    assert bench.score_cells(bench.ensemble([a]), "test") == bench.score_cells(a, "test")
    with pytest.raises(Exception, match="at least one"):
        bench.ensemble([])


def test_rebuild_in_one_process_gives_identical_hashes(diffusion_tiny, tmp_path):
    bench, zoo = diffusion_tiny
    # the fixture's zoo was built with 2 worker processes; this one trains everything here
    again = build_zoo(get_benchmark("digits-diffusion", size="tiny"), out=tmp_path / "again",
                      sanity=False, workers=1)
    first = {k: v for k, v in hash_tree(zoo.root).items() if k != "sanity.json"}
    assert hash_tree(again.root) == first


def test_lora_experts_merge_with_the_engine_like_peft(diffusion_tiny, tmp_path):
    """The zoo's PEFT LoRA experts go through the merge engine as full deltas: task arithmetic
    of one expert at lambda 1 equals PEFT's own merge_and_unload, and a merge of every expert
    loads with diffusers and is scored by the benchmark."""
    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    from mergezoo.merge import merge_models

    bench, zoo = diffusion_tiny
    base_dir = zoo.model_path("base")
    expert = zoo.model_path("expert", "group0-inverted", seed=0)
    single = merge_models("task_arithmetic", [expert], base=base_dir, out_dir=tmp_path / "one",
                          progress=False)
    assert single.files == ["diffusion_pytorch_model.safetensors"]
    ours = UNet2DConditionModel.from_pretrained(str(tmp_path / "one")).state_dict()
    peft_merged = PeftModel.from_pretrained(UNet2DConditionModel.from_pretrained(str(base_dir)),
                                            str(expert)).merge_and_unload().state_dict()
    assert ours.keys() == peft_merged.keys()
    for key, value in peft_merged.items():
        torch.testing.assert_close(ours[key], value, atol=1e-5, rtol=1e-5)

    experts = [m.path for m in zoo.models("expert") if m.seed == 0]
    merged = merge_models("ties", experts, base=base_dir, out_dir=tmp_path / "all",
                          params={"density": 0.5}, progress=False)
    scores = bench.evaluate(merged.out_dir, split="test")
    assert set(scores) == {c.name for c in bench.cells}
    assert all(0.0 <= s <= 1.0 for s in scores.values())

    # the same merge as a state dict in memory: the base model with the merged weights
    # scores exactly like the merged folder loaded from disk
    from safetensors.torch import load_file

    state = load_file(str(merged.out_dir / "diffusion_pytorch_model.safetensors"))
    model = bench.load_model(base_dir)
    assert bench.module(model) is model
    assert bench.with_weights(model, state) is model
    with torch_threads(bench.eval_threads):  # evaluate's threads: the same kernels
        assert bench.score_cells(model, "test") == scores
    with pytest.raises(Exception, match="do not fit"):
        bench.with_weights(model, {k: v for k, v in state.items() if "conv_in" not in k})
