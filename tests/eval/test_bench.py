"""`mergezoo bench` at tiny size: the whole run, its schema, the protocol (no held-out data
while tuning), scaling, determinism, resuming, and the `eval` and `demo` commands."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from mergezoo.errors import BenchmarkError, OutputExistsError
from mergezoo.eval.bench import BenchConfig, Job, LocalExecutor, run_bench
from mergezoo.eval.bench import runner as bench_runner

FEW = ["task_arithmetic", "ties"]


def schema() -> dict:
    return json.loads(resources.files("mergezoo.eval.bench").joinpath(
        "results.schema.json").read_text())


def numbers(results: dict) -> list[dict]:
    """Every row without what the machine's load decides (merge time, memory)."""
    rows = []
    for row in results["rows"]:
        row = dict(row)
        if "cost" in row:
            row["cost"] = {k: v for k, v in row["cost"].items()
                           if k not in ("merge_seconds", "peak_bytes")}
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def full_run(digits_tiny, tmp_path_factory):
    """Every default method, all baselines and scaling, once for the module."""
    bench, zoo = digits_tiny
    out = tmp_path_factory.mktemp("bench") / "out"
    results = run_bench(BenchConfig("digits-domains", size="tiny", orderings=2), out,
                        progress=False)
    return bench, zoo, out, results


def test_whole_bench_writes_valid_results_with_every_baseline(full_run):
    bench, zoo, out, results = full_run
    jsonschema.validate(results, schema())
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    baselines = {r["method"] for r in results["rows"] if r["kind"] == "baseline"}
    assert {"base", "experts", "multitask", "oracle", "ensemble", "greedy_soup"} <= baselines
    assert {f"expert:{c.name}" for c in bench.held_in_cells} <= baselines
    # every data-free method the benchmark can run (slerp merges two models at most)
    merged = {r["method"] for r in results["rows"] if r["kind"] == "merge"}
    assert {"average", "task_arithmetic", "ties", "dare_ties", "model_stock"} <= merged
    assert "slerp" not in merged
    for row in (r for r in results["rows"] if r["kind"] == "merge"):
        assert set(row["per_cell"]) == {c.name for c in bench.cells}
        assert row["cost"]["merge_seconds"] > 0
        assert (out / "models" / row["method"] / "config.json").is_file()
        assert row["requires"]["statistics"] is None and not row["requires"]["labels"]
    # the experts' row is each held-in cell's own expert: normalised held-in is 1 by definition
    experts = next(r for r in results["rows"] if r["method"] == "experts")
    assert experts["held_in_normalised"] == pytest.approx(1.0)
    report = (out / "results.md").read_text()
    assert "## Legend" in report and "ties" in report and "reproduced" in report
    for name in ("held_in_vs_held_out", "scaling", "score_vs_compute"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp*")) and not list((out / "plots").glob(".*"))


def test_schema_rejects_a_half_filled_results_file(full_run):
    _, _, _, results = full_run
    broken = json.loads(json.dumps(results))
    broken["complete"] = False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema())
    broken = json.loads(json.dumps(results))
    del next(r for r in broken["rows"] if r["kind"] == "merge")["cost"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema())


def test_scaling_rows_cover_two_to_n_experts(full_run):
    bench, _, _, results = full_run
    n = len(bench.held_in_cells)
    for method in ("average", "ties", "model_stock"):
        got = sorted(r["n_models"] for r in results["rows"]
                     if r["kind"] == "scaling" and r["method"] == method)
        assert got == list(range(2, n + 1))
    row = next(r for r in results["rows"] if r["kind"] == "scaling")
    assert row["points"] == 2  # two orderings


def test_tuning_never_reads_held_out_cells_or_test_data(digits_tiny, tmp_path, monkeypatch):
    bench_cls = type(digits_tiny[0])
    reads: list[tuple[str, str, str]] = []
    phase = {"now": "other"}
    original = bench_cls.dataset

    def recorded(self, cell, split="test"):
        reads.append((phase["now"], getattr(cell, "name", cell), split))
        return original(self, cell, split)

    real_tune = bench_runner._tune

    def tune(run, methods):
        # a fresh benchmark object: its caches (data, tensors, logits) were filled by the
        # baselines, and tuning must be seen reading its own data
        run.bench = run.context.benchmark = bench_cls(size=run.bench.size)
        phase["now"] = "tune"
        try:
            return real_tune(run, methods)
        finally:
            phase["now"] = "other"

    monkeypatch.setattr(bench_cls, "dataset", recorded)
    monkeypatch.setattr(bench_runner, "_tune", tune)
    run_bench(BenchConfig("digits-domains", size="tiny", methods=FEW, seeds=[0, 1],
                          scaling=False, write_models=False), tmp_path / "out", progress=False)
    bench = digits_tiny[0]
    held_in = {c.name for c in bench.held_in_cells}
    tuning = [r for r in reads if r[0] == "tune"]
    assert tuning, "the tuning step read no data at all"
    assert {split for _, _, split in tuning} == {"validation"}
    assert {cell for _, cell, _ in tuning} == held_in
    # the final test did read the held-out cells, so the recorder sees them
    assert any(split == "test" and cell not in held_in for _, cell, split in reads)


def test_rerun_gives_identical_numbers_and_reuses_finished_jobs(digits_tiny, tmp_path):
    config = BenchConfig("digits-domains", size="tiny", methods=FEW, seeds=[0, 1], orderings=1)
    first = run_bench(config, tmp_path / "a", progress=False)
    fresh = run_bench(config, tmp_path / "b", progress=False)
    assert numbers(first) == numbers(fresh)
    again = run_bench(config, tmp_path / "a", progress=False)  # same folder: reused
    assert numbers(again) == numbers(first)


class _Killed(Exception):
    pass


class _DiesAfter(LocalExecutor):
    """Runs `limit` jobs, then dies as a killed run would."""

    def __init__(self, context, limit):
        super().__init__(context)
        self.limit = limit

    def map(self, jobs):
        for job in jobs:
            if self.limit == 0:
                raise _Killed()
            self.limit -= 1
            yield job, self.context.run(job)


def test_interrupted_run_resumes_and_never_reports_a_partial_table(digits_tiny, tmp_path,
                                                                   monkeypatch):
    config = BenchConfig("digits-domains", size="tiny", methods=FEW, seeds=[0, 1],
                         orderings=1, write_models=False)
    made = {}
    real = bench_runner.LocalExecutor

    def dying(context):
        made["executor"] = _DiesAfter(context, 25)
        return made["executor"]

    monkeypatch.setattr(bench_runner, "LocalExecutor", dying)
    out = tmp_path / "out"
    with pytest.raises(_Killed):
        run_bench(config, out, progress=False)
    assert not (out / "results.json").exists() and not (out / "results.md").exists()
    done = (out / ".bench" / "jobs.jsonl").read_text().splitlines()
    assert len(done) == 25
    # a kill in the middle of a write leaves half a line: it is ignored
    with (out / ".bench" / "jobs.jsonl").open("a") as f:
        f.write('{"key": "merge|half')
    monkeypatch.setattr(bench_runner, "LocalExecutor", real)
    ran = []
    original_run = bench_runner.BenchContext.run

    def counting(self, job):
        ran.append(job.key)
        return original_run(self, job)

    monkeypatch.setattr(bench_runner.BenchContext, "run", counting)
    resumed = run_bench(config, out, progress=False)
    assert not set(ran) & {json.loads(line)["key"] for line in done}
    fresh = run_bench(config, tmp_path / "fresh", progress=False)
    assert numbers(resumed) == numbers(fresh)


def test_another_runs_folder_is_refused_unless_overwrite(digits_tiny, tmp_path):
    out = tmp_path / "out"
    run_bench(BenchConfig("digits-domains", size="tiny", methods=["task_arithmetic"],
                          seeds=[0], scaling=False, write_models=False), out, progress=False)
    other = BenchConfig("digits-domains", size="tiny", methods=["ties"], seeds=[0],
                        scaling=False, write_models=False)
    with pytest.raises(OutputExistsError, match="another bench run"):
        run_bench(other, out, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a mergezoo bench run"):
        run_bench(other, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    results = run_bench(other, out, overwrite=True, progress=False)
    assert [r["method"] for r in results["rows"] if r["kind"] == "merge"] == ["ties"]


def test_methods_are_checked_before_any_work(tmp_path):
    from mergezoo.errors import UnknownMethodError

    with pytest.raises(UnknownMethodError, match="valid: "):
        run_bench(BenchConfig("digits-domains", size="tiny", methods=["tie"]), tmp_path / "o",
                  progress=False)
    with pytest.raises(BenchmarkError, match="slerp: merges at most 2 models"):
        run_bench(BenchConfig("digits-domains", size="tiny", methods=["slerp"]), tmp_path / "o",
                  progress=False)
    assert not (tmp_path / "o").exists()


def test_a_new_run_on_the_same_zoo_reuses_the_zoo_models_scores(digits_tiny, tmp_path,
                                                                monkeypatch):
    config = BenchConfig("digits-domains", size="tiny", methods=["task_arithmetic"], seeds=[0],
                         scaling=False, write_models=False)
    first = run_bench(config, tmp_path / "a", progress=False)
    ran = []
    original_run = bench_runner.BenchContext.run

    def counting(self, job):
        ran.append(job)
        return original_run(self, job)

    monkeypatch.setattr(bench_runner.BenchContext, "run", counting)
    second = run_bench(config, tmp_path / "b", progress=False)
    assert numbers(second) == numbers(first)
    # the base, experts, multitask, oracles and ensembles came from the zoo's evaluation
    # cache; every merge was evaluated again
    assert ran and {j.kind for j in ran} == {"merge"}


def test_the_evaluation_cache_is_keyed_by_the_zoo_files_and_device(digits_tiny, tmp_path):
    from mergezoo.eval.bench.store import eval_cache

    _, zoo = digits_tiny
    here = eval_cache(zoo.root, "cpu").folder
    assert eval_cache(zoo.root, "cpu").folder == here
    assert eval_cache(zoo.root, "cuda").folder != here
    other = tmp_path / zoo.root.name  # same name, other files: another cache
    other.mkdir()
    (other / "zoo.json").write_text((zoo.root / "zoo.json").read_text() + " ")
    assert eval_cache(other, "cpu").folder != here


def test_worker_processes_give_the_numbers_of_this_process(digits_tiny):
    from mergezoo.eval.bench import BenchContext, ProcessExecutor

    bench, zoo = digits_tiny
    context = BenchContext(bench, zoo.root)
    held_in = tuple(c.name for c in bench.held_in_cells)
    jobs = [Job("merge", seed=0, split="validation", cells=held_in, method="ties",
                params=(("density", 0.2), ("lambda", lam)), experts=(0, 1, 2)) for lam in (0.5, 1.0)]
    jobs.append(Job("model", seed=None, split="test", cells=held_in,
                    model=zoo.model_path("base").name))
    here = {j.key: r["scores"] for j, r in LocalExecutor(context).map(jobs)}
    pool = ProcessExecutor(context, workers=2)
    try:
        there = {j.key: r["scores"] for j, r in pool.map(jobs)}
    finally:
        pool.close()
    assert there == here and len(here) == 3


def test_zoo_models_loaded_into_the_template_score_like_from_pretrained(digits_tiny):
    from mergezoo.eval.bench import BenchContext

    bench, zoo = digits_tiny
    context = BenchContext(bench, zoo.root)
    for model in (zoo.models("expert", seed=1)[0], zoo.models("multitask")[0]):
        job = Job("model", seed=None, split="test", cells=tuple(c.name for c in bench.cells),
                  model=model.name)
        assert context.run(job)["scores"] == bench.evaluate(model.path, split="test")


def test_job_keys_name_everything_that_defines_a_job():
    a = Job("merge", seed=0, split="validation", cells=("c",), method="ties",
            params=(("lambda", 1.0),), experts=(0, 1))
    variants = [Job("merge", seed=1, split="validation", cells=("c",), method="ties",
                    params=(("lambda", 1.0),), experts=(0, 1)),
                Job("merge", seed=0, split="test", cells=("c",), method="ties",
                    params=(("lambda", 1.0),), experts=(0, 1)),
                Job("merge", seed=0, split="validation", cells=("c",), method="ties",
                    params=(("lambda", 1.5),), experts=(0, 1)),
                Job("merge", seed=0, split="validation", cells=("c",), method="ties",
                    params=(("lambda", 1.0),), experts=(0,))]
    assert len({a.key, *(v.key for v in variants)}) == 5


def test_eval_scores_a_merged_folder_and_refuses_another_architecture(full_run, tmp_path,
                                                                      capsys):
    from mergezoo.cli import main

    _, _, out, results = full_run
    assert main(["eval", str(out / "models" / "ties"), "--benchmark", "digits-domains",
                 "--size", "tiny", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    seed0 = next(r for r in results["rows"] if r["method"] == "ties")
    assert scored["held_in"] == pytest.approx(seed0["per_seed"][0]["held_in"], abs=1e-4)
    # a ViT with a 5-way head does not fit a benchmark of 10-way classifiers
    from transformers import ViTConfig, ViTForImageClassification

    base = ViTConfig.from_pretrained(str(out / "models" / "ties"))
    base.num_labels = 5
    base.id2label = {i: str(i) for i in range(5)}
    base.label2id = {str(i): i for i in range(5)}
    ViTForImageClassification(base).save_pretrained(tmp_path / "five-way")
    assert main(["eval", str(tmp_path / "five-way"), "--benchmark", "digits-domains",
                 "--size", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "does not fit benchmark 'digits-domains'" in err and "classifier" in err
    assert main(["eval", str(out / "models" / "ties"), "--benchmark", "digits-domains",
                 "--size", "tiny", "--cells", "no-such-cell"]) == 2


def test_demo_runs_end_to_end_and_guards_its_folder(digits_tiny, tmp_path, capsys):
    from mergezoo.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--methods",
                 "task_arithmetic,ties", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in ("base", "experts", "multitask", "oracle", "task_arithmetic", "ties"):
        assert f"\n{name} " in printed
    assert "held-out" in printed and str(out / "results.md") in printed
    assert (out / "results.json").is_file()
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "models" / "ties" / "README.md")
    assert "ties" in card.data.tags and "tuned on held-in validation" in card.text
    leftovers = [p for p in Path(tmp_path).rglob("*") if ".tmp" in p.name]
    assert not leftovers
    # another run's folder is refused; an unknown method is refused before any work
    assert main(["demo", "--size", "tiny", "--out", str(out), "--methods", "ties",
                 "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["demo", "--size", "tiny", "--out", str(tmp_path / "new"), "--methods",
                 "ties,nope", "--quiet"]) == 2
    assert "unknown merge method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
