"""digits-domains at size tiny: zoo layout and cards, disjoint splits, deterministic rebuild,
a base with zero-shot skill on every cell, experts beating it on their own cells, cells read as
5-way tasks, the in-memory hooks (with_weights, ensemble), and the public evaluate() API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from huggingface_hub import ModelCard

from mergezoo.errors import BenchmarkError
from mergezoo.eval import ID_COLUMN, BenchmarkZoo, build_zoo, get_benchmark
from mergezoo.eval.benchmarks.digits_domains import (DOMAINS, GROUPS, HELD_IN, load_sources,
                                                     render)
from mergezoo.eval.zoo_writer import hash_tree


def test_zoo_has_every_model_with_hub_style_files(digits_tiny):
    bench, zoo = digits_tiny
    assert len(zoo.models("base")) == 1
    assert len(zoo.models("multitask")) == 1
    assert {m.cell for m in zoo.models("oracle")} == {c.name for c in bench.held_out_cells}
    experts = zoo.models("expert")
    assert sorted(HELD_IN) == sorted({m.cell for m in experts})
    assert zoo.seeds("expert") == [0, 1, 2]
    assert len(experts) == 3 * len(HELD_IN)
    for m in zoo.models():
        assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in m.path.iterdir()}


def test_expert_card_carries_tags_base_and_recipe(digits_tiny):
    bench, zoo = digits_tiny
    path = zoo.model_path("expert", "group1-rotated", seed=2)
    card = ModelCard.load(path / "README.md")
    tags = card.data.tags
    for tag in ("mergezoo-bench:digits-domains", "cell:group1-rotated", "role:expert", "seed:2",
                "group:group1", "domain:rotated"):
        assert tag in tags
    assert card.data.base_model == "digits-domains-base"
    assert (zoo.root / card.data.base_model / "model.safetensors").is_file()
    assert card.data.mergezoo["trained_on"] == ["group1-rotated"]
    assert "## Training recipe" in card.text and "classifier." in card.text
    base_card = ModelCard.load(zoo.model_path("base") / "README.md")
    # the base was pretrained broadly: plain digits plus a sample of every other cell
    assert set(base_card.data.mergezoo["trained_on"]) == {c.name for c in bench.cells}


def test_head_is_frozen_and_shared(digits_tiny):
    from safetensors.torch import load_file

    _, zoo = digits_tiny
    base = load_file(str(zoo.model_path("base") / "model.safetensors"))
    expert = load_file(str(zoo.model_path("expert", "group0-inverted", 0) / "model.safetensors"))
    heads = [k for k in base if k.startswith("classifier.")]
    assert heads and all(np.array_equal(base[k], expert[k]) for k in heads)
    body = [k for k in base if not k.startswith("classifier.")]
    assert any(not np.array_equal(base[k], expert[k]) for k in body)


def test_no_test_or_validation_source_in_any_train_split(digits_tiny):
    bench, zoo = digits_tiny
    train_ids = set()
    for cell in bench.cells:
        train_ids |= set(zoo.dataset(cell.name, "train")[ID_COLUMN])
    for cell in bench.cells:
        for split in ("validation", "test"):
            ids = set(zoo.dataset(cell.name, split)[ID_COLUMN])
            assert ids and not ids & train_ids, (cell.name, split)
        val, test = (set(zoo.dataset(cell.name, s)[ID_COLUMN]) for s in ("validation", "test"))
        assert not val & test


def test_cells_hold_only_their_digits_and_domain(digits_tiny):
    bench, zoo = digits_tiny
    groups = bench.spec.params["groups"]
    for cell in bench.cells:
        ds = zoo.dataset(cell.name, "train")
        assert set(ds["domain"]) == {cell.factors["domain"]}
        assert set(ds["label"]) <= set(groups[cell.factors["group"]])


def test_no_held_out_cell_in_any_expert_or_multitask_training_data(digits_tiny):
    bench, zoo = digits_tiny
    held_out = {c.name for c in bench.held_out_cells}
    for m in zoo.models("expert") + zoo.models("multitask"):
        trained_on = ModelCard.load(m.path / "README.md").data.mergezoo["trained_on"]
        assert trained_on and not set(trained_on) & held_out, m.name
        if m.role == "expert":
            assert trained_on == [m.cell]


def test_saved_data_equals_regenerated_data(digits_tiny):
    bench, zoo = digits_tiny
    fresh = get_benchmark("digits-domains", size="tiny")
    for cell in ("group0-inverted", "group4-plain"):
        saved, again = zoo.dataset(cell, "test"), fresh.dataset(cell, "test")
        assert saved[ID_COLUMN] == again[ID_COLUMN]
        assert saved["label"] == again["label"]
        assert np.array_equal(np.asarray(saved[0]["image"]), np.asarray(again[0]["image"]))


def test_manifest_hashes_match_files(digits_tiny):
    _, zoo = digits_tiny
    assert zoo.verify() == []
    assert len(zoo.manifest["files"]) > 100


def test_rebuild_gives_identical_file_hashes(digits_tiny, tmp_path):
    bench, zoo = digits_tiny
    again = build_zoo(get_benchmark("digits-domains", size="tiny"), out=tmp_path / "again",
                      sanity=False)
    skip = {"zoo.json", "build.json", "sanity.json"}
    first, second = hash_tree(zoo.root, skip), hash_tree(again.root, skip)
    assert first.keys() == second.keys()
    differing = [k for k in first if first[k] != second[k]]
    assert differing == []


def test_cached_zoo_is_reused_not_rebuilt(digits_tiny):
    bench, zoo = digits_tiny
    stamp = (zoo.root / "zoo.json").stat().st_mtime_ns
    again = build_zoo(get_benchmark("digits-domains", size="tiny"))
    assert again.root == zoo.root
    assert (zoo.root / "zoo.json").stat().st_mtime_ns == stamp
    assert zoo.root.name.startswith("digits-domains-tiny-")
    assert zoo.root.name.endswith(bench.spec.definition_hash()[:12])
    assert not [p for p in zoo.root.parent.iterdir() if ".tmp-" in p.name]


def test_experts_beat_the_base_on_their_own_cells(digits_tiny):
    bench, zoo = digits_tiny
    rows = {r["cell"]: r for r in zoo.sanity["cells"]}
    for cell in bench.held_in_cells:
        assert rows[cell.name]["own_expert"] > rows[cell.name]["base"], cell.name


def test_base_has_zero_shot_skill(digits_tiny):
    """A cell is a 5-way task (chance 0.2). The broadly pretrained base is strong on the plain
    domain it mostly saw and above chance on the other domains taken together (at size tiny
    it saw 8 images per cell of them; at the default size it is above chance on every cell,
    see the README's calibration table)."""
    bench, zoo = digits_tiny
    rows = {r["cell"]: r for r in zoo.sanity["cells"]}
    plain = [rows[c.name]["base"] for c in bench.cells if c.factors["domain"] == "plain"]
    other = [rows[c.name]["base"] for c in bench.cells if c.factors["domain"] != "plain"]
    assert min(plain) > 0.6
    assert sum(other) / len(other) > 0.35
    assert sum(v > 0.3 for v in other) >= len(other) // 2


def test_groups_overlap_and_predictions_stay_in_the_cell_group(digits_tiny):
    bench, zoo = digits_tiny
    assert all(len(d) == 5 for d in GROUPS.values())
    assert set(GROUPS["group0"]) & set(GROUPS["group1"])
    model = bench.load_model(zoo.model_path("expert", "group3-shuffled", 0))
    for name in ("group3-shuffled", "group0-plain"):
        cell = bench.cell(name)
        ds = bench.dataset(cell, "test")
        preds = bench.predict(model, ds, cell)
        assert set(preds) <= set(GROUPS[cell.factors["group"]])
        # the cached per-domain path of score() agrees with predict() on any dataset copy
        accuracy = sum(p == y for p, y in zip(preds, ds["label"])) / len(ds)
        assert bench.score(model, ds, cell) == pytest.approx(accuracy)


def test_with_weights_scores_like_the_model_whose_weights_it_got(digits_tiny):
    from safetensors.torch import load_file

    bench, zoo = digits_tiny
    model = bench.load_model(zoo.model_path("base"))
    assert bench.module(model) is model
    before = {c.name: bench.score(model, bench.dataset(c), c) for c in bench.cells}
    expert_dir = zoo.model_path("expert", "group0-inverted", 1)
    swapped = bench.with_weights(model, load_file(str(expert_dir / "model.safetensors")))
    # scored after the swap: the per-domain logits cache must notice the new weights
    after = {c.name: bench.score(swapped, bench.dataset(c), c) for c in bench.cells}
    assert after == bench.evaluate(expert_dir) != before
    with pytest.raises(BenchmarkError, match="do not fit"):
        bench.with_weights(model, {"classifier.weight": load_file(
            str(expert_dir / "model.safetensors"))["classifier.weight"]})


def test_ensemble_averages_class_probabilities(digits_tiny):
    import torch

    bench, zoo = digits_tiny
    a = bench.load_model(zoo.model_path("expert", "group0-inverted", 0))
    b = bench.load_model(zoo.model_path("expert", "group3-shuffled", 0))
    one = bench.ensemble([a])
    pair = bench.ensemble([a, b])
    scores = {}
    for name, m in (("a", a), ("b", b), ("one", one), ("pair", pair)):
        scores[name] = {c.name: bench.score(m, bench.dataset(c), c) for c in bench.cells}
    assert scores["one"] == scores["a"]
    assert scores["pair"] != scores["a"] and scores["pair"] != scores["b"]
    assert all(0.0 <= v <= 1.0 for v in scores["pair"].values())
    cell = bench.cell("group3-shuffled")
    probs, _ = bench.cell_probabilities(pair, cell, "test")
    pa, _ = bench.cell_probabilities(a, cell, "test")
    pb, _ = bench.cell_probabilities(b, cell, "test")
    assert torch.allclose(probs, (pa + pb) / 2)
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs)))
    assert bench.predict(pair, bench.dataset(cell), cell) == probs.argmax(-1).tolist()
    with pytest.raises(BenchmarkError, match="at least one"):
        bench.ensemble([])


def test_evaluate_returns_every_cell_and_matches_sanity(digits_tiny):
    bench, zoo = digits_tiny
    scores = bench.evaluate(zoo.model_path("base"), split="test")
    assert list(scores) == [c.name for c in bench.cells]
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    rows = {r["cell"]: r for r in zoo.sanity["cells"]}
    assert all(abs(scores[c] - rows[c]["base"]) < 1e-4 for c in scores)
    one = bench.evaluate(zoo.model_path("expert", "group3-shuffled", 0), "validation",
                         cells=["group3-shuffled"])
    assert list(one) == ["group3-shuffled"]


def test_evaluate_errors_name_the_culprit(digits_tiny, tmp_path):
    bench, zoo = digits_tiny
    with pytest.raises(BenchmarkError, match="no-such-dir"):
        bench.evaluate(tmp_path / "no-such-dir")
    with pytest.raises(BenchmarkError, match="group9-plain"):
        bench.evaluate(zoo.model_path("base"), cells=["group9-plain"])
    with pytest.raises(BenchmarkError, match="dev"):
        bench.evaluate(zoo.model_path("base"), split="dev")


def test_average_of_experts_is_scored_on_held_out_cells(digits_tiny):
    _, zoo = digits_tiny
    rows = [r for r in zoo.sanity["cells"] if not r["held_in"]]
    assert all(r["experts_average"] is not None and r["oracle"] is not None for r in rows)
    assert zoo.sanity["summary"]["held_out"]["experts_average"] != \
        zoo.sanity["summary"]["held_out"]["base"]


def test_build_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BenchmarkError, match="not a zoo"):
        build_zoo(get_benchmark("digits-domains", size="tiny"), out=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_open_non_zoo_folder_fails(tmp_path):
    with pytest.raises(BenchmarkError, match="not a built zoo"):
        BenchmarkZoo(tmp_path)


def test_domains_are_distinct_and_deterministic():
    images, labels = load_sources()
    assert images.shape == (1797, 16, 16) and labels.shape == (1797,)
    plain = render(images[5], "plain", 5)
    for domain in DOMAINS[1:]:
        out = render(images[5], domain, 5)
        assert out.shape == (16, 16) and out.min() >= 0 and out.max() <= 1
        assert not np.allclose(out, plain), domain
        assert np.array_equal(out, render(images[5], domain, 5)), domain
    half = render(images[5], "halfinverted", 5)  # the upper half as is, the lower inverted
    assert np.array_equal(half[:8], plain[:8]) and np.allclose(half[8:], 1 - plain[8:])
    with pytest.raises(BenchmarkError, match="sepia"):
        render(images[0], "sepia", 0)


def test_scoring_tensors_are_the_stored_images(digits_tiny):
    from mergezoo.eval.benchmarks.digits_domains.benchmark import to_tensor

    bench, _ = digits_tiny
    for cell in (HELD_IN[2], "group1-plain", HELD_IN[4]):
        x, y = bench.tensors(cell, "validation")
        ds = bench.dataset(cell, "validation")
        assert torch_equal(x, to_tensor(ds["image"]))  # rendered again == the PNGs decoded
        assert y.tolist() == ds["label"]


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def test_sanity_json_is_what_build_zoo_json_prints(digits_tiny, capsys):
    from mergezoo.cli import main

    _, zoo = digits_tiny
    assert main(["build-zoo", "digits-domains", "--size", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cells"] == zoo.sanity["cells"]


def test_summarize_means_over_held_in_and_held_out(digits_tiny):
    bench, zoo = digits_tiny
    scores = bench.evaluate(zoo.model_path("base"), split="test")
    summary = bench.summarize(scores)
    assert summary["held_in"] == pytest.approx(zoo.sanity["summary"]["held_in"]["base"], abs=1e-3)
    assert summary["held_out"] == pytest.approx(zoo.sanity["summary"]["held_out"]["base"], abs=1e-3)
    assert bench.summarize({"group0-inverted": 0.5}) == {"held_in": 0.5, "held_out": None}
    with pytest.raises(BenchmarkError, match="group7-plain"):
        bench.summarize({"group7-plain": 1.0})


def test_zoo_definition_yaml_round_trips_to_the_same_hash(digits_tiny):
    from mergezoo.eval import BenchmarkSpec

    bench, zoo = digits_tiny
    saved = BenchmarkSpec.from_yaml((zoo.root / "benchmark.yaml").read_text())
    assert saved == bench.spec
    assert saved.definition_hash() == zoo.definition_hash == bench.spec.definition_hash()
    assert get_benchmark("digits-domains", size="default").spec.definition_hash() != \
        zoo.definition_hash


def test_data_contract_rejects_a_test_example_leaked_into_train():
    import datasets

    from mergezoo.eval.benchmark import check_disjoint

    def dd(train, val, test):
        return datasets.DatasetDict({s: datasets.Dataset.from_dict({ID_COLUMN: ids})
                                     for s, ids in (("train", train), ("validation", val),
                                                    ("test", test))})
    check_disjoint("toy", {"a": dd([1, 2], [3], [4]), "b": dd([5], [6], [7])})
    with pytest.raises(BenchmarkError, match="test examples of cell 'b' are in the train split "
                                             "of cell 'a'"):
        check_disjoint("toy", {"a": dd([1, 2, 7], [3], [4]), "b": dd([5], [6], [7])})
    with pytest.raises(BenchmarkError, match="both validation and test"):
        check_disjoint("toy", {"a": dd([1], [3], [3])})


def test_dataset_repo_card_names_source_and_license(digits_tiny):
    from huggingface_hub import DatasetCard

    _, zoo = digits_tiny
    card = DatasetCard.load(zoo.root / zoo.manifest["datasets"]["path"] / "README.md")
    assert card.data.license == "cc-by-4.0"
    assert "load_digits" in card.text and "role:dataset" in card.data.tags
    assert set(zoo.manifest["datasets"]["cells"]["group0-plain"]) == {"train", "validation", "test"}
