"""YAML benchmark definitions over Hub experts and datasets: the shipped CLIP definition parses
and plans (no network), data sections merge and fail with named culprits, and make_data runs
load_dataset + per-cell filters on local parquet files."""

from __future__ import annotations

import pytest

from mergezoo.errors import BenchmarkDefinitionError, UnknownBenchmarkError
from mergezoo.eval import (ID_COLUMN, BenchmarkSpec, get_benchmark, list_benchmarks,
                                      shipped_definitions)
from mergezoo.eval.hub_benchmark import HubBenchmark

CLIP = "clip-vit-b32-eight-tasks"


def test_shipped_clip_definition_parses():
    assert CLIP in shipped_definitions()
    bench = get_benchmark(CLIP)
    assert isinstance(bench, HubBenchmark)
    assert bench.spec.task == "zero-shot-image-classification"
    assert bench.spec.base_model == "openai/clip-vit-base-patch32"
    assert [c.name for c in bench.held_out_cells] == ["eurosat", "mnist"]
    assert len(bench.held_in_cells) == 6
    assert bench.spec.experts["svhn"] == ["tanganke/clip-vit-base-patch32_svhn"]


def test_shipped_clip_definition_plans_every_cell_and_split():
    plan = get_benchmark(CLIP).plan()
    assert set(plan.data) == {"sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb",
                              "mnist", "dtd"}
    svhn = plan.data["svhn"]
    assert svhn["test"].path == "ufldl-stanford/svhn" and svhn["test"].name == "cropped_digits"
    assert svhn["train"].split == "train[:95%]" and svhn["validation"].split == "train[95%:]"
    assert plan.data["mnist"]["test"].path == "ylecun/mnist"
    assert "mnist" not in plan.experts
    text = "\n".join(plan.describe())
    assert "load_dataset('tanganke/dtd'" in text


def test_yaml_round_trip_of_shipped_definition():
    bench = get_benchmark(CLIP)
    again = BenchmarkSpec.from_yaml(bench.to_yaml())
    assert again == bench.spec
    assert HubBenchmark(again).plan() == bench.plan()


def test_registry_lists_digits_and_rejects_unknown_names():
    assert "digits-domains" in list_benchmarks()
    with pytest.raises(UnknownBenchmarkError, match="nope"):
        get_benchmark("nope")
    with pytest.raises(BenchmarkDefinitionError, match="huge"):
        get_benchmark("digits-domains", size="huge")


BASE_YAML = """
name: toy-hub
task: text-classification
factors: {topic: [sport, food], style: [plain, shouty]}
held_in: [sport-plain, food-shouty]
experts:
  sport-plain: [org/sport-plain-s0, org/sport-plain-s1]
  food-shouty: {tags: ["cell:food-shouty"]}
data:
  path: parquet
  data_files: {train: TRAIN, test: TEST}
  splits: {train: "train[:75%]", validation: "train[75%:]", test: test}
  input_column: text
  label_column: y
  factors:
    topic:
      sport: {filters: {topic: sport}}
      food: {filters: {topic: food}}
    style:
      plain: {filters: {style: plain}}
      shouty: {filters: {style: [shouty, loud]}}
"""


def write_parquet(tmp_path):
    import datasets

    rows = {"text": [], "y": [], "topic": [], "style": []}
    for i in range(32):
        rows["text"].append(f"example {i}")
        rows["y"].append(i % 2)
        rows["topic"].append(["sport", "food"][i % 2])
        rows["style"].append(["plain", "shouty", "loud", "plain"][i % 4])
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(train))
    datasets.Dataset.from_dict(rows).to_parquet(str(test))
    return BASE_YAML.replace("TRAIN", str(train)).replace("TEST", str(test))


def test_make_data_applies_per_factor_filters_and_adds_source_ids(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(write_parquet(tmp_path))
    bench = get_benchmark(str(path))
    assert bench.cell_data("food-shouty")["filters"] == {"topic": "food", "style": ["shouty", "loud"]}
    data = bench.data()
    shouty = data["food-shouty"]["test"]
    assert len(shouty) > 0 and set(shouty["topic"]) == {"food"}
    assert set(shouty["style"]) <= {"shouty", "loud"}
    assert "label" in shouty.column_names and "y" not in shouty.column_names
    train_ids = set(data["sport-plain"]["train"][ID_COLUMN])
    val_ids = set(data["sport-plain"]["validation"][ID_COLUMN])
    assert train_ids and val_ids and not train_ids & val_ids


@pytest.mark.parametrize("edit, culprit", [
    (lambda y: y.replace("input_column: text", "input_colum: text"), "input_colum"),
    (lambda y: y.replace("  path: parquet\n", ""), "no dataset `path`"),
    (lambda y: y.replace("task: text-classification", "task: dancing"), "dancing"),
    (lambda y: y.replace("  food-shouty: {tags: [\"cell:food-shouty\"]}\n", ""), "food-shouty"),
    (lambda y: y.replace('validation: "train[75%:]", ', ""), "splits"),
])
def test_bad_yaml_definitions_name_the_culprit(tmp_path, edit, culprit):
    path = tmp_path / "bad.yaml"
    path.write_text(edit(BASE_YAML))
    with pytest.raises(BenchmarkDefinitionError, match=culprit):
        get_benchmark(str(path))


def test_missing_yaml_file_is_named(tmp_path):
    with pytest.raises(BenchmarkDefinitionError, match="absent.yaml"):
        get_benchmark(str(tmp_path / "absent.yaml"))


IMAGE_YAML = """
name: toy-images
task: image-classification
factors: {colour: [red, blue]}
held_in: [red]
experts: {red: [MODEL]}
data:
  path: parquet
  data_files: {train: DATA, test: DATA}
  splits: {train: "train[:50%]", validation: "train[50%:]", test: test}
  factors:
    colour:
      red: {filters: {colour: red}}
      blue: {filters: {colour: blue}}
"""


def test_image_classification_yaml_benchmark_evaluates_a_model(tmp_path):
    """A YAML benchmark over local parquet data and a local ViT folder scores end to end."""
    import datasets
    import numpy as np
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    rng = np.random.default_rng(0)
    rows = {"image": [], "label": [], "colour": []}
    for i in range(24):
        colour = ["red", "blue"][i % 2]
        arr = np.zeros((16, 16, 3), dtype=np.uint8)
        arr[..., 0 if colour == "red" else 2] = 200 + rng.integers(0, 50)
        rows["image"].append(Image.fromarray(arr))
        rows["label"].append(i % 2)
        rows["colour"].append(colour)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(
        names=["r", "b"]), "colour": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "d.parquet"))
    torch.manual_seed(0)
    model_dir = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=16, num_labels=2)).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(model_dir)
    yaml_path = tmp_path / "toy.yaml"
    yaml_path.write_text(IMAGE_YAML.replace("DATA", str(tmp_path / "d.parquet"))
                         .replace("MODEL", str(model_dir)))
    bench = get_benchmark(str(yaml_path))
    assert bench.expert_refs("red") == [str(model_dir)]
    scores = bench.evaluate(model_dir, split="test")
    assert set(scores) == {"red", "blue"}
    # every test image of a cell has that cell's label, so each score is 0 or 1
    assert all(v in (0.0, 1.0) for v in scores.values())


class _FakeClip:
    """Text 'embeds' label i as the one-hot e_i; an image embeds as its mean colour channel."""

    def get_text_features(self, input_ids):
        import torch
        return torch.eye(3)[input_ids[:, 0]]

    def get_image_features(self, pixel_values):
        return pixel_values


class _FakeProcessor:
    def __init__(self):
        self.prompts = []

    def __call__(self, text=None, images=None, **kw):
        import torch
        if text is not None:
            self.prompts += text
            return {"input_ids": torch.tensor([[i] for i in range(len(text))])}
        return {"pixel_values": torch.tensor([[float(v) for v in im.getpixel((0, 0))]
                                              for im in images])}


def test_zero_shot_predict_scores_against_label_name_prompts(tmp_path):
    import datasets
    from PIL import Image

    spec_yaml = get_benchmark(CLIP).to_yaml()
    bench = HubBenchmark(BenchmarkSpec.from_yaml(spec_yaml))
    images = [Image.new("RGB", (4, 4), c) for c in [(9, 0, 0), (0, 0, 9), (0, 9, 0)]]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 2, 1]}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "owl"])}))
    processor = _FakeProcessor()
    preds = bench.predict((_FakeClip(), processor), ds, bench.cell("mnist"))
    assert preds == [0, 2, 1]
    assert processor.prompts == ["a photo of a cat.", "a photo of a dog.", "a photo of a owl."]


def test_overlapping_split_expressions_are_caught(tmp_path):
    from mergezoo.errors import BenchmarkError

    text = write_parquet(tmp_path).replace('validation: "train[75%:]"', 'validation: "train[50%:]"')
    path = tmp_path / "overlap.yaml"
    path.write_text(text)
    with pytest.raises(BenchmarkError, match="validation examples of cell .* train split"):
        get_benchmark(str(path)).data()


def test_source_ids_index_the_whole_source_split(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(write_parquet(tmp_path))
    data = get_benchmark(str(path)).data()
    ids = data["sport-plain"]["validation"][ID_COLUMN]
    rows = [int(i.rsplit(":", 1)[1]) for i in ids]
    assert ids[0].startswith("parquet:train:") and min(rows) >= 24  # train[75%:] of 32 rows
