"""Bad input gets a clear error (a mergezoo.errors class, a message that names the culprit) and
nothing is written: no output folder, no temporary folder beside it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from merge_helpers import assert_nothing_written, load_folder, save_model
from mergezoo.errors import (
    BadTensorError,
    HyperparameterError,
    IncompatibleModelsError,
    ModelNotFoundError,
    MergezooError,
    OutputExistsError,
    RecipeError,
    UnknownMethodError,
    UnsafeCheckpointError,
)
from mergezoo.merge import MergeRecipe, get_method, merge_models, run_recipe
from mergezoo.merge import registry


def merge(toy_zoo, method="ties", **kw):
    kw.setdefault("progress", False)
    base = kw.pop("base", toy_zoo["base"])
    experts = kw.pop("experts", toy_zoo["experts"])
    return merge_models(method, experts, base=base, out_dir=toy_zoo["root"] / "out", **kw)


def check_refused(toy_zoo, error, *fragments, **kw):
    with pytest.raises(error) as info:
        merge(toy_zoo, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert_nothing_written(toy_zoo["root"] / "out")
    return message


# --- method and hyperparameters ------------------------------------------------------------------

def test_unknown_method_lists_valid_ones(toy_zoo):
    msg = check_refused(toy_zoo, UnknownMethodError, "'tiez'", "ties", "task_arithmetic",
                        "average", method="tiez")
    assert "valid" in msg


def test_unknown_hyperparameter_lists_valid_ones(toy_zoo):
    check_refused(toy_zoo, HyperparameterError, "'densty'", "density", "lambda",
                  params={"densty": 0.2})


def test_unknown_per_model_hyperparameter(toy_zoo):
    check_refused(toy_zoo, HyperparameterError, "'lambda'", "model 1", "weight",
                  model_params=[{}, {"lambda": 1.0}, {}])


@pytest.mark.parametrize("method,params,name", [
    ("ties", {"density": 0}, "density"),
    ("ties", {"density": 1.5}, "density"),
    ("ties", {"density": -0.1}, "density"),
    ("dare_ties", {"density": 0.0}, "density"),
    ("dare_linear", {"density": 2}, "density"),
    ("breadcrumbs", {"gamma": 1.0}, "gamma"),
    ("breadcrumbs", {"density": 0}, "density"),
    ("consensus", {"mask_lambda": -1}, "mask_lambda"),
    ("ties", {"density": float("nan")}, "density"),
])
def test_out_of_range_values(toy_zoo, method, params, name):
    msg = check_refused(toy_zoo, HyperparameterError, name, method=method, params=params)
    assert "range" in msg


@pytest.mark.parametrize("t", [-0.1, 1.5])
def test_slerp_t_out_of_range(toy_zoo, t):
    check_refused(toy_zoo, HyperparameterError, "t=", str(t), method="slerp",
                  experts=toy_zoo["experts"][:1], params={"t": t})


def test_per_model_density_out_of_range_names_the_model(toy_zoo):
    check_refused(toy_zoo, HyperparameterError, "model 2", "density",
                  model_params=[{}, {}, {"density": 1.2}])


@pytest.mark.parametrize("params,fragment", [
    ({"density": "high"}, "density"),
    ({"normalize": "yes"}, "normalize"),
    ({"sign_rule": "max"}, "sign_rule"),
    ({"trim_scope": "layer"}, "trim_scope"),
    ({"lambda": [{"filter": "attn", "valu": 1.0}]}, "lambda"),
])
def test_wrong_types_and_choices(toy_zoo, params, fragment):
    check_refused(toy_zoo, HyperparameterError, fragment, params=params)


def test_out_of_range_value_inside_a_gradient(toy_zoo):
    check_refused(toy_zoo, HyperparameterError, "density", params={"density": [0.5, 1.5]})


def test_resolve_refuses_directly():
    with pytest.raises(HyperparameterError, match="density"):
        get_method("ties").resolve({"density": 0}, [], 2)
    with pytest.raises(UnknownMethodError, match="valid: .*average"):
        get_method("nope")


# --- model lists -------------------------------------------------------------------------------

def test_empty_model_list(toy_zoo):
    check_refused(toy_zoo, RecipeError, "no models", experts=[])


def test_method_needing_a_base_without_one(toy_zoo):
    check_refused(toy_zoo, RecipeError, "ties", "base", base=None)


def test_too_many_models_for_slerp(toy_zoo):
    check_refused(toy_zoo, RecipeError, "slerp", method="slerp")


def test_too_few_models_for_model_stock(toy_zoo):
    check_refused(toy_zoo, RecipeError, "model_stock", "at least 2",
                  method="model_stock", experts=toy_zoo["experts"][:1])


def test_missing_model_folder(toy_zoo):
    missing = toy_zoo["root"] / "no-such-expert"
    check_refused(toy_zoo, ModelNotFoundError, "no-such-expert",
                  experts=[toy_zoo["experts"][0], missing])


def test_folder_without_weights(toy_zoo):
    empty = toy_zoo["root"] / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "toy",
                                                    "architectures": ["ToyModel"]}))
    check_refused(toy_zoo, MergezooError, "empty", experts=[toy_zoo["experts"][0], empty])


# --- incompatible models -----------------------------------------------------------------------

def test_missing_tensor_names_expert_and_tensor(toy_zoo):
    state = dict(toy_zoo["expert_states"][1])
    del state["model.layers.1.mlp.weight"]
    bad = save_model(toy_zoo["root"] / "expert-missing", state)
    check_refused(toy_zoo, IncompatibleModelsError, "expert-missing", "model.layers.1.mlp.weight",
                  experts=[toy_zoo["experts"][0], bad])


def test_shape_mismatch_names_expert_and_tensor(toy_zoo):
    state = dict(toy_zoo["expert_states"][1])
    state["lm_head.weight"] = torch.zeros(11, 6)
    bad = save_model(toy_zoo["root"] / "expert-shape", state)
    msg = check_refused(toy_zoo, IncompatibleModelsError, "expert-shape", "lm_head.weight",
                        experts=[toy_zoo["experts"][0], bad])
    assert "11" in msg


def test_different_architectures(toy_zoo):
    bad = save_model(toy_zoo["root"] / "expert-bert", toy_zoo["expert_states"][1],
                     config={"model_type": "bert", "architectures": ["BertModel"]})
    check_refused(toy_zoo, IncompatibleModelsError, "expert-bert", "BertModel",
                  experts=[toy_zoo["experts"][0], bad])


# --- bad tensors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kernels", ["eager", "fused"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("method,params", [("ties", {"density": 0.5}),
                                           ("ties", {"density": 0.5, "trim_scope": "model"}),
                                           ("dare_ties", {"density": 0.5}),
                                           ("task_arithmetic", {}), ("model_stock", {})])
def test_nan_or_inf_in_an_expert_names_expert_and_tensor(toy_zoo, kernels, value, method,
                                                         params):
    """With the torch functions and with the fused kernels (the `kernels` option)."""
    state = {k: v.clone() for k, v in toy_zoo["expert_states"][1].items()}
    state["model.layers.2.attn.weight"][1, 2] = value
    bad = save_model(toy_zoo["root"] / "expert-nan", state)
    check_refused(toy_zoo, BadTensorError, "expert-nan", "model.layers.2.attn.weight",
                  method=method, params=params, experts=[toy_zoo["experts"][0], bad],
                  kernels=kernels)


def test_nan_in_the_base_names_the_base(toy_zoo):
    state = {k: v.clone() for k, v in toy_zoo["base_state"].items()}
    state["model.norm.weight"][0] = float("nan")
    bad = save_model(toy_zoo["root"] / "base-nan", state)
    check_refused(toy_zoo, BadTensorError, "base-nan", "model.norm.weight", base=bad)
    with pytest.raises(BadTensorError) as info:  # the culprit as fields, too
        merge(toy_zoo, base=bad)
    assert info.value.tensor == "model.norm.weight"
    assert "base-nan" in info.value.model


@pytest.mark.parametrize("kernels", ["eager", "fused"])
def test_nan_in_an_expert_whose_weight_is_zero_is_still_refused(toy_zoo, kernels):
    state = {k: v.clone() for k, v in toy_zoo["expert_states"][1].items()}
    state["lm_head.weight"][0, 0] = float("inf")
    bad = save_model(toy_zoo["root"] / "expert-inf", state)
    check_refused(toy_zoo, BadTensorError, "expert-inf", "lm_head.weight", method="average",
                  base=None, experts=[toy_zoo["experts"][0], bad],
                  model_params=[{"weight": 1.0}, {"weight": 0.0}], kernels=kernels)


# --- pickle checkpoints ------------------------------------------------------------------------

def save_pickle(folder, tensors):
    folder.mkdir(parents=True)
    torch.save(tensors, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"model_type": "toy",
                                                    "architectures": ["ToyModel"]}))
    return folder


def test_pickle_checkpoint_refused_without_allow_pickle(toy_zoo):
    pickled = save_pickle(toy_zoo["root"] / "expert-pickle", toy_zoo["expert_states"][1])
    msg = check_refused(toy_zoo, UnsafeCheckpointError, "expert-pickle", "pytorch_model.bin",
                        experts=[toy_zoo["experts"][0], pickled])
    assert "allow" in msg and "pickle" in msg


def test_pickle_checkpoint_loaded_with_allow_pickle(toy_zoo):
    pickled = save_pickle(toy_zoo["root"] / "expert-pickle", toy_zoo["expert_states"][1])
    merge(toy_zoo, "task_arithmetic", experts=[toy_zoo["experts"][0], pickled],
          allow_pickle=True)
    out = toy_zoo["root"] / "out"
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin"))
    merged = load_folder(out)
    for key, base in toy_zoo["base_state"].items():
        expected = base + sum(e[key] - base for e in toy_zoo["expert_states"][:2])
        torch.testing.assert_close(merged[key], expected)


def test_pickle_base_loaded_with_allow_pickle(toy_zoo):
    pickled = save_pickle(toy_zoo["root"] / "base-pickle", toy_zoo["base_state"])
    merge(toy_zoo, "task_arithmetic", base=pickled, allow_pickle=True, params={"lambda": 0.0})
    merged = load_folder(toy_zoo["root"] / "out")
    for key, base in toy_zoo["base_state"].items():
        torch.testing.assert_close(merged[key], base)


# --- recipes -----------------------------------------------------------------------------------

def test_recipe_not_valid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("merge_method: ties\nmodels: [a, b\n  parameters: {density: 0.2\n")
    with pytest.raises(RecipeError, match="not valid YAML") as info:
        MergeRecipe.from_file(path)
    assert "bad.yaml" in str(info.value)


def test_recipe_not_a_mapping():
    with pytest.raises(RecipeError, match="mapping"):
        MergeRecipe.from_yaml("- ties\n- average\n")


def test_recipe_unknown_field_lists_valid_fields():
    with pytest.raises(RecipeError) as info:
        MergeRecipe.from_yaml("merge_method: ties\nmodels: [a]\nbase_modle: b\n")
    msg = str(info.value)
    assert "base_modle" in msg and "unknown field" in msg and "base_model" in msg


def test_recipe_unknown_field_inside_a_model_entry():
    with pytest.raises(RecipeError, match="models.0.*(weigth|unknown)"):
        MergeRecipe.from_yaml("merge_method: ties\nmodels:\n  - model: a\n    weigth: 1\n")


def test_mergekit_recipe_fields_honoured_or_refused_by_name():
    """A real mergekit recipe: tokenizer_source: base, int8_mask and rescale on ties, della:
    honoured; the fields mergezoo cannot honour are refused by name."""
    text = ("merge_method: {method}\nbase_model: org/base\nmodels:\n  - model: org/a\n"
            "    parameters: {{weight: 1.0, density: 0.5}}\n"
            "parameters: {{int8_mask: true, {extra}}}\ntokenizer_source: base\ndtype: bfloat16\n")
    from mergezoo.merge import get_method
    for method, extra in [("ties", "rescale: true"), ("della", "epsilon: 0.1"),
                          ("della_linear", "rescale: false")]:
        recipe = MergeRecipe.from_yaml(text.format(method=method, extra=extra))
        assert recipe.tokenizer_source == "base"
        get_method(recipe.merge_method).resolve(recipe.parameters,
                                               [m.parameters for m in recipe.models], 1)
    for field, value in [("tokenizer_source", "union"), ("tokenizer", "{source: union}"),
                         ("chat_template", "chatml"), ("modules", "{}")]:
        with pytest.raises(RecipeError, match=field):
            MergeRecipe.from_yaml(f"merge_method: ties\nbase_model: b\nmodels: [a]\n"
                                  f"{field}: {value}\n")
    with pytest.raises(RecipeError, match="tokenizer_source"):  # base needs a base model
        MergeRecipe.from_yaml("merge_method: average\nmodels: [a]\ntokenizer_source: base\n")


def test_recipe_mergekit_slices_refused_clearly():
    with pytest.raises(RecipeError, match="slices"):
        MergeRecipe.from_yaml("merge_method: ties\nslices: []\n")


def test_recipe_unknown_dtype():
    with pytest.raises(RecipeError, match="float13"):
        MergeRecipe.from_yaml("merge_method: ties\nmodels: [a]\nout_dtype: float13\n")


def test_recipe_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="nothere.yaml"):
        MergeRecipe.from_file(tmp_path / "nothere.yaml")


def test_recipe_with_bad_hyperparameter_writes_nothing(toy_zoo):
    e0, e1 = toy_zoo["experts"][:2]
    recipe = MergeRecipe.from_yaml(
        f"merge_method: ties\nbase_model: {toy_zoo['base']}\n"
        f"models:\n  - model: {e0}\n    parameters: {{weight: 1.0, density: 0.0}}\n"
        f"  - model: {e1}\n")
    out = toy_zoo["root"] / "out"
    with pytest.raises(HyperparameterError, match="density"):
        run_recipe(recipe, out_dir=out, progress=False)
    assert_nothing_written(out)


# --- output folder -----------------------------------------------------------------------------

def test_existing_output_without_overwrite(toy_zoo):
    out = toy_zoo["root"] / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="out") as info:
        merge(toy_zoo)
    assert info.value.path == str(out.absolute())
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]


class DiskFull(OSError):
    pass


def failing_method(monkeypatch, name, exc, after=3):
    """Replace method `name` by one that raises `exc` on its (after+1)-th tensor."""
    spec = get_method(name)
    calls = {"n": 0}

    def fn(x, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return spec.fn(x, **kwargs)

    # Without its family row (which the kernels compile), so that every tensor goes through `fn`.
    monkeypatch.setitem(registry._REGISTRY, spec.name,
                        dataclasses.replace(spec, fn=fn, family=None))
    return calls


@pytest.mark.parametrize("exc", [DiskFull("no space left on device"), KeyboardInterrupt()])
def test_interrupted_merge_leaves_no_output(toy_zoo, monkeypatch, exc):
    calls = failing_method(monkeypatch, "task_arithmetic", exc)
    with pytest.raises(type(exc)):
        merge(toy_zoo, "task_arithmetic")
    assert calls["n"] == 4
    assert_nothing_written(toy_zoo["root"] / "out")


def test_interrupted_overwrite_keeps_the_previous_output(toy_zoo, monkeypatch):
    merge(toy_zoo, "task_arithmetic")
    out = toy_zoo["root"] / "out"
    before = load_folder(out)
    failing_method(monkeypatch, "task_arithmetic", DiskFull("no space left on device"))
    with pytest.raises(DiskFull):
        merge(toy_zoo, "task_arithmetic", overwrite=True, params={"lambda": 0.5})
    after = load_folder(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("exc", [RuntimeError("an internal bug"), ValueError("an internal bug"),
                                 torch.OutOfMemoryError("out of memory")])
@pytest.mark.parametrize("method", ["task_arithmetic", "model_stock"])
def test_an_error_inside_a_method_keeps_its_type_and_traceback(toy_zoo, monkeypatch, exc,
                                                               method):
    """A bug or an out-of-memory inside a method is not the user's input: it is not wrapped
    as a MergezooError (which the CLI prints as a one-line user error), and its traceback still
    reaches the frame that raised it. Slice by slice (task arithmetic) and whole tensors."""
    failing_method(monkeypatch, method, exc, after=0)
    with pytest.raises(type(exc)) as info:
        merge(toy_zoo, method)
    assert info.value is exc and not isinstance(info.value, MergezooError)
    assert info.traceback[-1].name == "fn"  # the failing method's own frame
    assert_nothing_written(toy_zoo["root"] / "out")


def test_the_cli_does_not_swallow_an_internal_error(toy_zoo, monkeypatch, capsys):
    from mergezoo.cli import main

    failing_method(monkeypatch, "task_arithmetic", RuntimeError("an internal bug"), after=0)
    out = toy_zoo["root"] / "out"
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["merge", "--method", "task_arithmetic", "--base", str(toy_zoo["base"]),
              *map(str, toy_zoo["experts"]), "--out", str(out), "-q"])
    assert "error:" not in capsys.readouterr().err  # not printed as a user error
    assert_nothing_written(out)


def test_missing_component_folder(toy_zoo):
    message = check_refused(toy_zoo, IncompatibleModelsError, "unet", component="unet")
    assert "base" in message


def test_unknown_device(toy_zoo):
    check_refused(toy_zoo, RecipeError, "tpu9", device="tpu9")


@pytest.mark.parametrize("method,model_params", [
    ("average", [{"weight": 1.0}, {"weight": -1.0}]),
    ("multislerp", [{"weight": 0.0}, {"weight": 0.0}]),
])
def test_weights_that_cannot_be_normalized(toy_zoo, method, model_params):
    check_refused(toy_zoo, MergezooError, "weights", method=method, base=None,
                  experts=toy_zoo["experts"][:2], model_params=model_params)


@pytest.mark.parametrize("density", [[0.2, 0.8], [{"filter": "attn", "value": 0.5}, {"value": 1.0}]])
def test_BUG_ties_model_scope_with_per_layer_density_is_a_clear_error(toy_zoo, density):
    """trim_scope: model computes one threshold per expert from `density`; a per-layer density
    (a gradient list or filter rules, valid for every other method and for trim_scope: tensor)
    reaches global_trim.magnitude_thresholds as a list and crashes with a bare TypeError
    ("int() argument must be ... not 'list'"). Expected: a HyperparameterError that names
    density / trim_scope (or per-layer densities honoured), and nothing written."""
    check_refused(toy_zoo, HyperparameterError, "density",
                  params={"density": density, "trim_scope": "model"})


# --- refusals found while merging: our named errors, from the file and the in-memory path -----

def _antipodal():
    base = {"w": torch.zeros(4)}
    return base, [{"w": torch.tensor([1.0, 2.0, 3.0, 4.0])},
                  {"w": -torch.tensor([1.0, 2.0, 3.0, 4.0])},
                  {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}]


def test_a_refusal_found_while_merging_is_a_named_error_that_names_the_tensor():
    from mergezoo.merge import merge_state_dicts

    base, experts = _antipodal()
    # Weights that cancel the unit vectors exactly: multislerp refuses (mergekit too).
    with pytest.raises(IncompatibleModelsError, match="tensor 'w'.*antipodal"):
        merge_state_dicts("multislerp", base, experts,
                          model_params=[{"weight": 2.0}, {"weight": 2.0}, {"weight": 0.0}])


@pytest.mark.parametrize("params,fragment", [
    ({"density": [{"filter": "nowhere", "value": 0.5}]}, "no filter rule matches"),
    ({"density": 1e-6}, "below what the random drop resolves")])
def test_setting_refusals_are_hyperparameter_errors(toy_zoo, params, fragment):
    check_refused(toy_zoo, HyperparameterError, fragment, method="dare_ties", params=params)
