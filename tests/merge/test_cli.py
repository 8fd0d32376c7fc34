"""`mergezoo merge` and `mergezoo methods`, called in-process through mergezoo.cli.main."""

from __future__ import annotations

import json
import os

import pytest
import torch

from merge_helpers import assert_nothing_written, load_folder, save_model
from mergezoo.cli import main
from mergezoo.merge import list_methods, merge_models


def cli(*args):
    return main([str(a) for a in args])


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def reference(toy_zoo, name, method, experts=None, base="default", **kw):
    out = toy_zoo["root"] / f"ref-{name}"
    merge_models(method, experts or toy_zoo["experts"],
                 base=toy_zoo["base"] if base == "default" else base, out_dir=out,
                 progress=False, **kw)
    return load_folder(out)


def assert_clean_error(capsys, status, *fragments):
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mergezoo merge: error:"), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


# --- merging -----------------------------------------------------------------------------------

def test_merge_from_recipe(toy_zoo, capsys):
    e0, e1, e2 = toy_zoo["experts"]
    recipe = toy_zoo["root"] / "recipe.yaml"
    recipe.write_text(f"""\
merge_method: ties
base_model: {toy_zoo['base']}
models:
  - model: {e0}
    parameters: {{weight: 1.0, density: 0.3}}
  - model: {e1}
    parameters: {{weight: 0.5}}
  - model: {e2}
parameters: {{lambda: 1.2, density: 0.6}}
dtype: float32
""")
    out = toy_zoo["root"] / "merged"
    assert cli("merge", recipe, "--out", out, "--quiet") == 0
    assert capsys.readouterr().err == ""
    expected = reference(toy_zoo, "recipe", "ties", params={"lambda": 1.2, "density": 0.6},
                         model_params=[{"weight": 1.0, "density": 0.3}, {"weight": 0.5}, {}])
    assert_same(load_folder(out), expected)
    assert "merge_method: ties" in (out / "mergezoo_recipe.yaml").read_text()


def test_mergekit_recipe_listing_the_base_among_models(toy_zoo):
    e0, e1, _ = toy_zoo["experts"]
    recipe = toy_zoo["root"] / "mk.yaml"
    recipe.write_text(f"""\
models:
  - model: {toy_zoo['base']}
  - model: {e0}
    parameters:
      density: 0.5
      weight: 0.5
  - model: {e1}
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: {toy_zoo['base']}
parameters:
  normalize: true
dtype: float32
""")
    out = toy_zoo["root"] / "merged"
    assert cli("merge", recipe, "--out", out, "-q") == 0
    expected = reference(toy_zoo, "mk", "ties", experts=[e0, e1], params={"normalize": True},
                         model_params=[{"density": 0.5, "weight": 0.5}] * 2)
    assert_same(load_folder(out), expected)


@pytest.mark.parametrize("kernels,env,used", [([], None, "auto"), ([], "eager", "eager"),
                                               (["--kernels", "fused"], "eager", "fused"),
                                               (["--kernels", "eager"], None, "eager")])
def test_merge_from_the_command_line(toy_zoo, monkeypatch, kernels, env, used):
    from mergezoo.merge.accel import plans

    if env is None:
        monkeypatch.delenv("MERGEZOO_KERNELS", raising=False)
    else:
        monkeypatch.setenv("MERGEZOO_KERNELS", env)
    before = dict(os.environ)
    modes = []
    real = plans.worth_it
    monkeypatch.setattr(plans, "worth_it",
                        lambda row, entries, mode: modes.append(mode) or real(row, entries, mode))
    e0, e1, _ = toy_zoo["experts"]
    out = toy_zoo["root"] / "merged"
    status = cli("merge", "--method", "ties", "--base", toy_zoo["base"], e0, e1, "--out", out,
                 "--set", "density=0.2", "--set", "lambda=1.0", "-q", *kernels)
    assert status == 0
    # --kernels reaches the engine as an option ($MERGEZOO_KERNELS is only its default), and
    # the command writes no environment variable.
    assert modes == [used]
    assert dict(os.environ) == before
    expected = reference(toy_zoo, "cl", "ties", experts=[e0, e1],
                         params={"density": 0.2, "lambda": 1.0})
    assert_same(load_folder(out), expected)


def test_set_overrides_the_recipe_and_flags_apply(toy_zoo):
    e0, e1, _ = toy_zoo["experts"]
    recipe = toy_zoo["root"] / "r.yaml"
    recipe.write_text(f"merge_method: dare_linear\nbase_model: {toy_zoo['base']}\n"
                      f"models: [{e0}, {e1}]\nparameters: {{density: 0.9, lambda: 2.0}}\n")
    out = toy_zoo["root"] / "merged"
    status = cli("merge", recipe, "--out", out, "--set", "density=0.5", "--seed", "7",
                 "--out-dtype", "bfloat16", "--lines", "0.5,0.5", "--shard-size", "300", "-q")
    assert status == 0
    from mergezoo.merge import LiNeS
    expected = reference(toy_zoo, "flags", "dare_linear", experts=[e0, e1], seed=7,
                         params={"density": 0.5, "lambda": 2.0}, out_dtype=torch.bfloat16,
                         lines=LiNeS(0.5, 0.5), max_shard_size=300)
    merged = load_folder(out)
    assert {v.dtype for v in merged.values()} == {torch.bfloat16}
    assert (out / "model.safetensors.index.json").is_file()
    assert_same(merged, expected)


def test_overwrite_flag(toy_zoo, capsys):
    out = toy_zoo["root"] / "merged"
    args = ["merge", "--method", "average", *toy_zoo["experts"], "--out", out, "-q"]
    assert cli(*args) == 0
    assert cli(*args) == 2
    assert_clean_error(capsys, 2, str(out), "overwrite")
    assert cli(*args, "--overwrite") == 0


def test_summary_line_unless_quiet(toy_zoo, capsys):
    out = toy_zoo["root"] / "merged"
    assert cli("merge", "--method", "average", *toy_zoo["experts"], "--out", out) == 0
    err = capsys.readouterr().err
    assert "merged 9 tensors" in err and "average" in err


# --- errors ------------------------------------------------------------------------------------

def test_unknown_kernels_setting_is_named(toy_zoo, capsys, monkeypatch):
    monkeypatch.setenv("MERGEZOO_KERNELS", "turbo")
    out = toy_zoo["root"] / "merged"
    status = cli("merge", "--method", "task_arithmetic", "--base", toy_zoo["base"],
                 *toy_zoo["experts"], "--out", out)
    assert_clean_error(capsys, status, "MERGEZOO_KERNELS='turbo'", "auto, fused, eager")
    assert_nothing_written(out)


def test_unknown_method(toy_zoo, capsys):
    out = toy_zoo["root"] / "merged"
    status = cli("merge", "--method", "tiez", *toy_zoo["experts"], "--out", out)
    assert_clean_error(capsys, status, "tiez", "ties", "task_arithmetic")
    assert_nothing_written(out)


@pytest.mark.parametrize("setting,fragment", [("density=0", "density"),
                                              ("densty=0.2", "densty"),
                                              ("density", "NAME=VALUE"),
                                              ("density=abc", "density")])
def test_bad_set(toy_zoo, capsys, setting, fragment):
    out = toy_zoo["root"] / "merged"
    status = cli("merge", "--method", "ties", "--base", toy_zoo["base"], *toy_zoo["experts"],
                 "--out", out, "--set", setting)
    assert_clean_error(capsys, status, fragment)
    assert_nothing_written(out)


def test_bad_lines(toy_zoo, capsys):
    out = toy_zoo["root"] / "merged"
    status = cli("merge", "--method", "ties", "--base", toy_zoo["base"], *toy_zoo["experts"],
                 "--out", out, "--lines", "0.5")
    assert_clean_error(capsys, status, "--lines")
    assert_nothing_written(out)


def test_invalid_yaml_recipe(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("merge_method: [ties\n")
    status = cli("merge", recipe, "--out", tmp_path / "merged")
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert err.startswith("mergezoo merge: error:") and "broken.yaml" in err and "YAML" in err
    assert_nothing_written(tmp_path / "merged")


def _broken_yaml(toy_zoo):
    recipe = toy_zoo["root"] / "broken.yaml"
    recipe.write_text("merge_method: [ties\n")
    return [recipe]


def _shape_mismatch(toy_zoo):
    state = dict(toy_zoo["expert_states"][1])
    state["lm_head.weight"] = torch.zeros(3, 3)
    bad = save_model(toy_zoo["root"] / "expert-shape", state)
    return ["--method", "average", toy_zoo["experts"][0], bad]


def test_invalid_yaml_error_is_one_line(toy_zoo, capsys):
    out = toy_zoo["root"] / "merged"
    status = cli("merge", *_broken_yaml(toy_zoo), "--out", out)
    assert_clean_error(capsys, status, "broken.yaml", "YAML")
    assert_nothing_written(out)


def test_incompatible_models_error_lists_every_problem(toy_zoo, capsys):
    """Incompatible experts get one error whose header line is followed by one indented line
    per problem, so a user sees every problem at once (issue 3: one message, every problem)."""
    out = toy_zoo["root"] / "merged"
    status = cli("merge", *_shape_mismatch(toy_zoo), "--out", out)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and "Traceback" not in err
    assert lines[0].startswith("mergezoo merge: error:")
    assert all(line.startswith(" ") for line in lines[1:]) and len(lines) >= 2
    assert "expert-shape" in err and "lm_head.weight" in err
    assert_nothing_written(out)


def test_unknown_recipe_field(toy_zoo, capsys):
    recipe = toy_zoo["root"] / "r.yaml"
    recipe.write_text(f"merge_method: average\nmodels: [{toy_zoo['experts'][0]}]\nmerge_mehtod: x\n")
    status = cli("merge", recipe, "--out", toy_zoo["root"] / "merged")
    err = capsys.readouterr().err
    assert status == 2 and "merge_mehtod" in err and "Traceback" not in err
    assert err.startswith("mergezoo merge: error:")
    assert_nothing_written(toy_zoo["root"] / "merged")


def test_missing_recipe_and_models_without_method(tmp_path, capsys):
    status = cli("merge", tmp_path / "nope.yaml", "--out", tmp_path / "merged")
    assert_clean_error(capsys, status, "nope.yaml")
    status = cli("merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "merged")
    assert_clean_error(capsys, status, "--method")
    assert_nothing_written(tmp_path / "merged")


def test_incompatible_models_exit_2_naming_the_culprit(toy_zoo, capsys):
    state = dict(toy_zoo["expert_states"][1])
    state["lm_head.weight"] = torch.zeros(3, 3)
    bad = save_model(toy_zoo["root"] / "expert-shape", state)
    out = toy_zoo["root"] / "merged"
    status = cli("merge", "--method", "average", toy_zoo["experts"][0], bad, "--out", out)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("mergezoo merge: error:") and "Traceback" not in err
    assert "expert-shape" in err and "lm_head.weight" in err
    assert_nothing_written(out)


def test_pickle_needs_allow_pickle(toy_zoo, capsys):
    folder = toy_zoo["root"] / "expert-pickle"
    folder.mkdir()
    torch.save(toy_zoo["expert_states"][0], folder / "pytorch_model.bin")
    out = toy_zoo["root"] / "merged"
    args = ["merge", "--method", "average", folder, toy_zoo["experts"][1], "--out", out, "-q"]
    status = cli(*args)
    assert_clean_error(capsys, status, "expert-pickle", "--allow-pickle")
    assert_nothing_written(out)
    assert cli(*args, "--allow-pickle") == 0
    assert (out / "model.safetensors").is_file()


def test_missing_out_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli("merge", "--method", "average", "a")
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err


# --- methods and help --------------------------------------------------------------------------

def test_methods_table(capsys):
    assert cli("methods") == 0
    out = capsys.readouterr().out
    for m in list_methods():
        assert m.name in out and m.paper in out
    assert "density=1.0*" in out  # ties' per-model density default: mergekit's (keep all)


def test_methods_json(capsys):
    assert cli("methods", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {d["name"]: d for d in data}
    assert {"ties", "slerp", "consensus", "model_stock"} <= set(by_name)
    ties = by_name["ties"]
    assert ties["requires"] == {"base_model": True, "statistics": None, "labels": None}
    assert ties["hyperparameters"]["density"]["range"] == "(0, 1]"
    assert ties["hyperparameters"]["density"]["per_model"] is True
    assert set(ties["hyperparameters"]["trim_scope"]["choices"]) == {"tensor", "model"}
    assert ties["grid"]["density"]
    assert by_name["average"]["requires"]["base_model"] is False
    assert "linear" in by_name["average"]["aliases"]


def test_methods_one_method(capsys):
    assert cli("methods", "breadcrumbs") == 0
    out = capsys.readouterr().out
    assert "breadcrumbs" in out and "gamma" in out and "arxiv.org/abs/2312.06795" in out


def test_methods_unknown_name(capsys):
    status = cli("methods", "nope")
    err = capsys.readouterr().err
    assert status == 2 and "nope" in err and "ties" in err


@pytest.mark.parametrize("args", [["--help"], ["merge", "--help"], ["methods", "--help"]])
def test_help(capsys, args):
    with pytest.raises(SystemExit) as info:
        cli(*args)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mergezoo" in out
    if args[0] == "merge":
        assert "--set" in out and "--overwrite" in out and "--allow-pickle" in out
