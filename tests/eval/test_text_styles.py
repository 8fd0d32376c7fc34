"""text-styles at size tiny: real MiniLM base with a real zero-shot score, Hub-style zoo of
BertModel folders, disjoint cells and splits, deterministic rebuild, experts beating the base."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from mergezoo.eval import ID_COLUMN, build_zoo, get_benchmark
from mergezoo.eval.benchmarks.text_styles.data import LANGUAGES, cell_dataset, task_sentences
from mergezoo.eval.zoo_writer import hash_tree


@pytest.fixture(scope="module")
def text_tiny(zoo_cache):
    bench = get_benchmark("text-styles", size="tiny")
    return bench, build_zoo(bench, workers=2)


def test_languages_are_deterministic_transforms():
    assert LANGUAGES["reversed"]("the cat sat") == "sat cat the"
    assert LANGUAGES["piglatin"]("the apple was great") == "ethay appleway asway eatgray"
    text = "reserve a table for two"
    assert LANGUAGES["cipher"](LANGUAGES["cipher"](text)) == text
    assert LANGUAGES["cipher"](text) != text
    assert task_sentences("topic", (4, 2, 2), 0) == task_sentences("topic", (4, 2, 2), 0)


def test_base_has_a_real_zero_shot_score(text_tiny):
    bench, zoo = text_tiny
    from mergezoo.eval.benchmarks.text_styles.model import accuracy, label_embeddings

    enc = bench.load_model(zoo.model_path("base"))
    ds = cell_dataset("topic", "plain", "test", (12, 4, 8))
    plain = accuracy(enc, ds, label_embeddings(enc, "topic"))
    cipher = accuracy(enc, cell_dataset("topic", "cipher", "test", (12, 4, 8)),
                      label_embeddings(enc, "topic"))
    assert plain >= 0.75 > 0.25  # 4 labels: chance is 0.25
    assert cipher < plain


def test_zoo_models_load_with_transformers_and_carry_cards(text_tiny):
    from transformers import AutoModel, AutoTokenizer

    bench, zoo = text_tiny
    assert len(zoo.models("base")) == len(zoo.models("multitask")) == 1
    assert {m.cell for m in zoo.models("expert")} == {c.name for c in bench.held_in_cells}
    assert {m.cell for m in zoo.models("oracle")} == {c.name for c in bench.held_out_cells}
    path = zoo.model_path("expert", "topic-piglatin", seed=0)
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md",
            "modules.json"} <= files
    model = AutoModel.from_pretrained(str(path))
    assert type(model).__name__ == "BertModel"
    assert AutoTokenizer.from_pretrained(str(path))("hello")["input_ids"][0] == 101
    card = ModelCard.load(path / "README.md")
    for tag in ("mergezoo-bench:text-styles", "cell:topic-piglatin", "role:expert",
                "task:topic", "language:piglatin", "seed:0"):
        assert tag in card.data.tags
    assert card.data.base_model == "text-styles-base"
    assert card.data.mergezoo["trained_on"] == ["topic-piglatin"]


def test_cells_and_splits_are_disjoint(text_tiny):
    bench, zoo = text_tiny
    train_ids, train_text = set(), set()
    for cell in bench.cells:
        ds = zoo.dataset(cell.name, "train")
        train_ids |= set(ds[ID_COLUMN])
        train_text |= set(ds["plain"])
    for cell in bench.cells:
        for split in ("validation", "test"):
            ds = zoo.dataset(cell.name, split)
            assert len(ds) > 0
            assert not set(ds[ID_COLUMN]) & train_ids
            assert not set(ds["plain"]) & train_text
    held_out = {c.name for c in bench.held_out_cells}
    for m in zoo.models("expert") + zoo.models("multitask"):
        trained_on = ModelCard.load(m.path / "README.md").data.mergezoo["trained_on"]
        assert trained_on and not set(trained_on) & held_out


def test_experts_beat_the_base_on_their_cells(text_tiny):
    bench, zoo = text_tiny
    rows = {r["cell"]: r for r in zoo.sanity["cells"]}
    for cell in bench.held_in_cells:
        assert rows[cell.name]["own_expert"] > rows[cell.name]["base"], rows[cell.name]


def test_rebuild_in_one_process_gives_identical_hashes(text_tiny, tmp_path):
    bench, zoo = text_tiny
    # the fixture's zoo was built with 2 worker processes; this one trains everything here
    again = build_zoo(get_benchmark("text-styles", size="tiny"), out=tmp_path / "again",
                      sanity=False, workers=1)
    first = {k: v for k, v in hash_tree(zoo.root).items() if k != "sanity.json"}
    assert hash_tree(again.root) == first


def test_experts_merge_into_a_loadable_sentence_encoder(text_tiny, tmp_path):
    """The full fine-tuned experts merge with the engine (tokenizer and pooling files come
    along from the base), and the merge is scored on every cell."""
    from transformers import AutoModel, AutoTokenizer

    from mergezoo.merge import merge_models

    bench, zoo = text_tiny
    base = zoo.model_path("base")
    experts = [m.path for m in zoo.models("expert") if m.seed == 0]
    result = merge_models("task_arithmetic", experts, base=base, out_dir=tmp_path / "ta",
                          params={"lambda": 0.5}, progress=False)
    out = result.out_dir
    AutoTokenizer.from_pretrained(out)
    merged = AutoModel.from_pretrained(out).state_dict()
    original = AutoModel.from_pretrained(base).state_dict()
    assert any(not (merged[k] == original[k]).all() for k in merged)
    scores = bench.evaluate(out, split="test")
    assert set(scores) == {c.name for c in bench.cells}
    assert all(0.0 <= s <= 1.0 for s in scores.values())


def test_module_is_the_bert_inside_the_encoder_and_with_weights_swaps_it(text_tiny):
    from safetensors.torch import load_file

    bench, zoo = text_tiny
    cell = bench.cell("topic-piglatin")
    ds = bench.dataset(cell, "test")
    expert_dir = zoo.model_path("expert", cell.name, seed=0)
    model = bench.load_model(zoo.model_path("base"))
    assert type(bench.module(model)).__name__ == "BertModel"
    base_score = bench.score(model, ds, cell)
    state = load_file(str(expert_dir / "model.safetensors"))
    swapped = bench.with_weights(model, state)
    assert swapped is model
    expert_score = bench.score(bench.load_model(expert_dir), ds, cell)
    assert bench.score(swapped, ds, cell) == expert_score != base_score
    with pytest.raises(Exception, match="do not fit"):
        bench.with_weights(model, {"not.a.weight": state[next(iter(state))]})


def test_ensemble_averages_the_members_softmax(text_tiny):
    import torch

    from mergezoo.eval.benchmarks.text_styles.model import LOGIT_SCALE, embed

    bench, zoo = text_tiny
    base = bench.load_model(zoo.model_path("base"))
    expert = bench.load_model(zoo.model_path("expert", "topic-piglatin", seed=0))
    for cell in bench.cells:
        ds = bench.dataset(cell, "test")
        assert bench.predict(bench.ensemble([expert]), ds, cell) == bench.predict(expert, ds, cell)
    cell = bench.cell("topic-piglatin")
    ds = bench.dataset(cell, "test")
    pair = bench.ensemble([base, expert])
    labels = bench.label_embeddings()["topic"]
    probs = sum(torch.softmax(LOGIT_SCALE * embed(m, ds["text"]) @ labels.T, -1)
                for m in (base, expert)) / 2
    assert bench.predict(pair, ds, cell) == probs.argmax(-1).tolist()
    assert 0.0 <= bench.score(pair, ds, cell) <= 1.0
    every = {name: [p for c in bench.cells for p in bench.predict(m, bench.dataset(c), c)]
             for name, m in (("base", base), ("expert", expert), ("pair", pair))}
    assert every["pair"] != every["base"] and every["pair"] != every["expert"]
