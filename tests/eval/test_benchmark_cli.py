"""`mergezoo build-zoo` and `mergezoo benchmarks`, and merging zoo experts with mergezoo.merge
then scoring the merge with Benchmark.evaluate."""

from __future__ import annotations

import json

from mergezoo.cli import main


def test_build_zoo_json_schema(digits_tiny, capsys):
    bench, zoo = digits_tiny
    assert main(["build-zoo", "digits-domains", "--size", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["benchmark"] == "digits-domains" and out["size"] == "tiny"
    assert out["zoo"] == str(zoo.root)
    assert [c["cell"] for c in out["cells"]] == [c.name for c in bench.cells]
    for row in out["cells"]:
        assert isinstance(row["held_in"], bool)
        assert 0.0 <= row["base"] <= 1.0 and 0.0 <= row["multitask"] <= 1.0
        assert set(row["experts"]) == {c.name for c in bench.held_in_cells}
        assert row["best_expert"] == max(row["experts"].values())
        if row["held_in"]:
            assert 0.0 <= row["own_expert"] <= 1.0 and row["oracle"] is None
            assert row["experts"][row["cell"]] == row["own_expert"]
        else:
            assert row["own_expert"] is None and 0.0 <= row["oracle"] <= 1.0
    assert set(out["summary"]) == {"held_in", "held_out"}


def test_build_zoo_table(digits_tiny, capsys):
    assert main(["build-zoo", "digits-domains", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "group0-inverted" in out and "mean held_out" in out and "own_expert" in out


def test_build_zoo_unknown_benchmark_exits_2(capsys):
    assert main(["build-zoo", "no-such-bench", "--size", "tiny"]) == 2
    assert "no-such-bench" in capsys.readouterr().err


def test_build_zoo_refuses_zero_workers_before_building(capsys):
    assert main(["build-zoo", "digits-domains", "--size", "tiny", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_benchmarks_lists_factors_and_cells(capsys):
    assert main(["benchmarks", "--json"]) == 0
    listed = {b["name"]: b for b in json.loads(capsys.readouterr().out)}
    digits = listed["digits-domains"]
    assert digits["factors"]["domain"][:2] == ["plain", "inverted"]
    assert len(digits["cells"]) == 30 and len(digits["held_in"]) == 5
    assert listed["clip-vit-b32-eight-tasks"]["kind"] == "yaml"
    assert main(["benchmarks"]) == 0
    assert "held-out cells:" in capsys.readouterr().out


def test_benchmarks_plan_and_yaml(capsys):
    assert main(["benchmarks", "clip-vit-b32-eight-tasks", "--plan"]) == 0
    assert "tanganke/clip-vit-base-patch32_gtsrb" in capsys.readouterr().out
    assert main(["benchmarks", "digits-domains", "--yaml", "--size", "tiny"]) == 0
    assert "size: tiny" in capsys.readouterr().out
    assert main(["benchmarks", "digits-domains", "--plan"]) == 2


def test_merged_experts_score_through_evaluate(digits_tiny, tmp_path):
    from mergezoo.merge import merge_models

    bench, zoo = digits_tiny
    experts = [m.path for m in zoo.models("expert", seed=0)]
    merge_models("average", experts, out_dir=tmp_path / "avg", progress=False)
    merged = bench.evaluate(tmp_path / "avg", split="test")
    rows = {r["cell"]: r for r in zoo.sanity["cells"]}
    assert set(merged) == set(rows)
    # the sanity table's "experts average" is the engine's average, one per seed, mean over seeds
    per_seed = [merged] + [
        bench.evaluate(merge_models("average", [m.path for m in zoo.models("expert", seed=s)],
                                    out_dir=tmp_path / f"avg{s}", progress=False).out_dir)
        for s in zoo.seeds()[1:]]
    for cell, row in rows.items():
        assert row["experts_average"] == round(sum(p[cell] for p in per_seed) / len(per_seed), 4)


def test_zoo_search_finds_the_toy_experts_and_merge_scores(digits_tiny, tmp_path):
    """The offline path of the design: search the local zoo by tag -> merge -> evaluate."""
    from mergezoo.merge import merge_models
    from mergezoo.zoo.local_zoo import list_zoo
    from mergezoo.zoo.search import find_experts, search_zoo

    bench, zoo = digits_tiny
    listed = {e.repo_id for e in list_zoo(zoo.root)}
    assert listed == {m.name for m in zoo.models()}  # the dataset repo is not taken for a model
    hits = search_zoo(zoo.root, ["mergezoo-bench:digits-domains", "cell:group2-halfinverted"])
    assert sorted(h.repo_id for h in hits) == [
        f"digits-domains-expert-group2-halfinverted-seed{k}" for k in range(3)]
    assert {h.base_model for h in hits} == {"digits-domains-base"}
    experts = find_experts(["role:expert", "seed:0"], base="digits-domains-base", zoo=zoo.root)
    assert len(experts) == len(bench.held_in_cells)
    merge_models("task_arithmetic", experts, base=zoo.model_path("base"), out_dir=tmp_path / "ta",
                 params={"lambda": 0.3}, progress=False)
    scores = bench.evaluate(tmp_path / "ta", split="validation",
                            cells=[c.name for c in bench.held_in_cells])
    assert len(scores) == 5 and all(0.0 <= v <= 1.0 for v in scores.values())
