"""YAML benchmark definitions over Hub experts and datasets: the shipped CLIP definition parses
and plans (no network), data sections merge and fail with named culprits, and make_data runs
load_dataset + per-cell filters on local parquet files."""

from __future__ import annotations

import pytest

from mergezoo.errors import BenchmarkDefinitionError, UnknownBenchmarkError
from mergezoo.eval.benchmarks import (ID_COLUMN, BenchmarkSpec, get_benchmark, list_benchmarks,
                                      shipped_definitions)
from mergezoo.eval.benchmarks.hub import HubBenchmark

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
