"""The in-memory merge (mergezoo.merge.memory) against the streaming engine: the same tensors
for every registered method, LoRA experts' exact task vectors, views over some experts, the
errors, and the caches (a lambda sweep reuses one merge, and never returns a stale one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from merge_helpers import load_folder, perturb, save_model, toy_state
from safetensors.torch import load_file

from mergezoo.errors import (HyperparameterError, IncompatibleModelsError, RecipeError,
                             UnknownMethodError)
from mergezoo.merge import (LiNeS, TaskVectors, list_methods, merge_sources, merge_state_dicts,
                            open_source)

N_EXPERTS = 3


def _state(seed: int) -> dict[str, torch.Tensor]:
    """The toy model plus a tensor large enough for the engine's slices and the bracketed
    top-k search (> 2**18 entries), with repeated magnitudes (ties at the cuts), and an
    integer buffer."""
    state = toy_state(seed)
    g = torch.Generator().manual_seed(seed)
    state["model.layers.1.mlp.big.weight"] = (torch.randn(640, 512, generator=g) * 8).round() / 8
    state["model.position_ids"] = torch.arange(12)
    return state


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    base = _state(0)
    experts = []
    for i in range(N_EXPERTS):
        e = perturb({k: v for k, v in base.items() if v.is_floating_point()}, i)
        e["model.layers.1.mlp.big.weight"] = base["model.layers.1.mlp.big.weight"] + (
            torch.randint(-3, 4, (640, 512), generator=torch.Generator().manual_seed(i)) / 4)
        e["model.position_ids"] = base["model.position_ids"] + 1  # the base's are kept
        experts.append(e)
    return {"root": root, "base": base, "experts": experts,
            "base_dir": save_model(root / "base", base),
            "expert_dirs": [save_model(root / f"e{i}", e) for i, e in enumerate(experts)]}


# One sensible configuration per registered method: (experts used, params, model_params, seed).
CASES = {
    "average": ([0, 1, 2], {}, [{"weight": 1.0}, {"weight": 2.0}, {"weight": 0.5}], 0),
    "breadcrumbs": ([0, 1, 2], {"density": 0.8, "gamma": 0.05, "lambda": 0.7}, None, 0),
    "breadcrumbs_ties": ([0, 1, 2], {"density": 0.6, "gamma": 0.1, "lambda": 1.3}, None, 0),
    "consensus": ([0, 1, 2], {"k": 2, "mask_lambda": 0.4, "lambda": 0.8}, None, 0),
    "dare_linear": ([0, 1, 2], {"density": 0.5, "lambda": 1.3}, None, 7),
    "dare_ties": ([0, 1, 2], {"density": 0.3}, None, 3),
    "della": ([0, 1, 2], {"density": 0.5, "epsilon": 0.2, "lambda": 0.9}, None, 4),
    "della_linear": ([0, 1], {"density": 0.4, "epsilon": 0.1}, None, 5),
    "karcher": ([0, 1, 2], {"max_iter": 5}, [{"weight": 1.0}, {"weight": 2.0}, {"weight": 3.0}], 0),
    "model_stock": ([0, 1, 2], {"filter_wise": True}, None, 0),
    "multislerp": ([0, 1, 2], {}, [{"weight": 1.0}, {"weight": 2.0}, {"weight": 3.0}], 0),
    "slerp": ([1], {"t": 0.3}, None, 0),
    "task_arithmetic": ([0, 1, 2], {"lambda": 0.6}, [{"weight": 0.5}, {}, {"weight": -1.0}], 0),
    "ties": ([0, 1, 2], {"density": 0.3, "lambda": 1.2}, None, 0),
}
# Settings that exercise more of the engine: whole-model trimming, per-layer gradients.
EXTRA = {
    "ties/model": ("ties", [0, 1, 2], {"density": 0.3, "trim_scope": "model"}, None, 0),
    "ties/rescale": ("ties", [0, 1, 2], {"density": 0.3, "rescale": True, "lambda": 0.8}, None, 0),
    "ties/gradient": ("ties", [0, 2], {"density": [0.2, 0.9], "lambda": [0.5, 1.5]}, None, 0),
    "average/no-base": ("average", [0, 1], {}, None, 0),
}


def test_every_registered_method_has_a_case():
    assert {m.name for m in list_methods()} <= set(CASES)


def _engine(zoo, tmp_path, method, experts, params, model_params, seed, *, use_base=True,
            lines=None):
    out = tmp_path / "engine"
    merge_sources(method, [open_source(zoo["expert_dirs"][i]) for i in experts],
                  base=open_source(zoo["base_dir"]) if use_base else None, out_dir=out,
                  params=params, model_params=model_params, seed=seed, device="cpu",
                  lines=lines, progress=False)
    return load_folder(out)


def _assert_same(got: dict, want: dict):
    assert list(got) == list(want) or set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        # Exact: the same function on the same float32 task vectors, in the same order of
        # operations (the engine's slices and fused kernels are byte-identical to its
        # whole-tensor torch path, tested in test_slicing.py / test_kernels.py).
        assert torch.equal(got[key], value), f"{key}: max diff {(got[key] - value).abs().max()}"


@pytest.mark.parametrize("case", sorted(CASES) + sorted(EXTRA))
def test_same_tensors_as_the_streaming_engine(zoo, tmp_path, case):
    method, experts, params, model_params, seed = \
        EXTRA[case] if case in EXTRA else (case, *CASES[case])
    use_base = case != "average/no-base"
    want = _engine(zoo, tmp_path, method, experts, params, model_params, seed, use_base=use_base)
    tv = TaskVectors(zoo["base"] if use_base else None, [zoo["experts"][i] for i in experts])
    got = tv.merge(method, params, model_params, seed=seed)
    _assert_same(got, want)
    reference = zoo["base"] if use_base else zoo["experts"][experts[0]]  # as the engine's
    assert torch.equal(got["model.position_ids"], reference["model.position_ids"])
    # A merge from the cache (same parameters again) is identical.
    _assert_same(tv.merge(method, params, model_params, seed=seed), want)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "dare_linear", "consensus",
                                    "task_arithmetic"])
def test_the_whole_tensor_path_gives_the_same_tensors(zoo, tmp_path, monkeypatch, method):
    """The path CUDA takes (whole tensors through the method's torch function, cuts from the
    cached per-tensor pass), run here on CPU."""
    _, params, model_params, seed = CASES[method]
    want = _engine(zoo, tmp_path, method, [0, 1, 2], params, model_params, seed)
    monkeypatch.setattr(TaskVectors, "_sliced", lambda self, spec, use_base: False)
    tv = TaskVectors(zoo["base"], zoo["experts"])
    for _ in range(2):  # the second time from the caches
        _assert_same(tv.merge(method, params, model_params, seed=seed), want)


def test_lines_and_out_dtype_as_the_engine(zoo, tmp_path):
    lines = LiNeS(alpha=0.3, beta=0.9)
    want = _engine(zoo, tmp_path, "ties", [0, 1, 2], {"density": 0.4, "lambda": 0.9}, None, 0,
                   lines=lines)
    got = TaskVectors(zoo["base"], zoo["experts"]).merge(
        "ties", {"density": 0.4, "lambda": 0.9}, lines=lines)
    _assert_same(got, want)
    half = merge_state_dicts("ties", zoo["base"], zoo["experts"], {"density": 0.4},
                             out_dtype=torch.bfloat16)
    assert half["lm_head.weight"].dtype == torch.bfloat16
    assert half["model.position_ids"].dtype == torch.int64


def test_a_lambda_sweep_reuses_one_merge_and_is_never_stale(zoo):
    tv = TaskVectors(zoo["base"], zoo["experts"])
    results = {}
    for lam in [0.5, 1.0, 1.7, 0.5]:
        got = tv.merge("ties", {"density": 0.3, "lambda": lam})
        fresh = merge_state_dicts("ties", zoo["base"], zoo["experts"],
                                  {"density": 0.3, "lambda": lam})
        _assert_same(got, fresh)  # from the cached unscaled merge: bit for bit a fresh merge
        results[lam] = got
    assert len(tv._shared.merged) == 1  # one unscaled merge served the whole sweep
    key = "model.layers.1.mlp.big.weight"
    assert not torch.equal(results[0.5][key], results[1.7][key])
    # Other hyperparameters, seeds and experts are other merges.
    other = tv.merge("ties", {"density": 0.6, "lambda": 0.5})
    assert not torch.equal(other[key], results[0.5][key])
    assert torch.equal(tv.merge("ties", {"density": 0.3, "lambda": 0.5})[key], results[0.5][key])
    a = tv.merge("dare_ties", {"density": 0.5}, seed=1)[key]
    assert torch.equal(tv.merge("dare_ties", {"density": 0.5}, seed=1)[key], a)
    assert not torch.equal(tv.merge("dare_ties", {"density": 0.5}, seed=2)[key], a)
    # The returned tensors are the caller's: changing one does not change the next merge.
    results[1.0][key].zero_()
    assert torch.equal(tv.merge("ties", {"density": 0.3, "lambda": 1.0})[key],
                       merge_state_dicts("ties", zoo["base"], zoo["experts"],
                                         {"density": 0.3, "lambda": 1.0})[key])


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_a_density_sweep_gives_fresh_merges_from_sorted_magnitudes(zoo, method):
    tv = TaskVectors(zoo["base"], zoo["experts"])
    for density in [0.3, 0.5, 0.3, 0.05, 0.95]:
        params = {"density": density, "lambda": 0.9}
        if method == "breadcrumbs_ties":
            params["gamma"] = 0.02
        _assert_same(tv.merge(method, params),
                     merge_state_dicts(method, zoo["base"], zoo["experts"], params))
    # From the second density on, the cuts came from the sorted magnitudes.
    big = "model.layers.1.mlp.big.weight"  # two slices, tied magnitudes at the cuts
    assert {(0, big), (2, big)} <= set(tv._shared.sorted_bits)


def test_the_cache_is_bounded_by_bytes(zoo):
    tv = TaskVectors(zoo["base"], zoo["experts"], cache_bytes=2_000_000)  # one merge fits
    for density in [0.2, 0.4, 0.6]:
        tv.merge("task_arithmetic", {"lambda": density})
        tv.merge("ties", {"density": density})
    assert tv._shared.merged_bytes <= 2_000_000
    assert len(tv._shared.merged) == 1
    assert tv._shared.sorted_bytes <= 2_000_000


def test_select_merges_only_the_chosen_experts(zoo, tmp_path):
    tv = TaskVectors(zoo["base"], zoo["experts"], labels=["a", "b", "c"])
    view = tv.select([2, 0])
    assert view.n_models == 2 and view.labels == ["c", "a"]
    assert view._shared is tv._shared  # the task vectors are not copied
    want = _engine(zoo, tmp_path, "ties", [2, 0], {"density": 0.3}, None, 0)
    _assert_same(view.merge("ties", {"density": 0.3}), want)
    first = tv.select([0]).merge("task_arithmetic")
    assert torch.equal(first["lm_head.weight"], zoo["experts"][0]["lm_head.weight"])
    with pytest.raises(RecipeError, match="out of range"):
        tv.select([3])


def test_from_task_vectors_and_from_folders(zoo, tmp_path):
    base = zoo["base"]
    deltas = [{k: e[k] - base[k] for k in base if base[k].is_floating_point()}
              for e in zoo["experts"]]
    tv = TaskVectors.from_task_vectors(base, deltas)
    want = _engine(zoo, tmp_path, "ties", [0, 1, 2], {"density": 0.3}, None, 0)
    _assert_same(tv.merge("ties", {"density": 0.3}), want)
    folders = TaskVectors.from_folders(zoo["base_dir"], zoo["expert_dirs"])
    assert folders.labels[0].startswith("expert '")
    _assert_same(folders.merge("ties", {"density": 0.3}), want)


def _tiny_lora(root: Path) -> tuple[Path, Path, float]:
    """A tiny Llama base and a PEFT LoRA adapter on it with non-zero B (as
    tests/zoo/models.py makes them); returns the folders and the adapter's scaling."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(root / "lora")
    return root / "base", root / "lora", 8 / 4


def test_a_lora_expert_gives_the_exact_float32_delta(tmp_path):
    base_dir, lora_dir, scaling = _tiny_lora(tmp_path)
    assert json.loads((lora_dir / "adapter_config.json").read_text())["r"] == 4
    factors = load_file(str(lora_dir / "adapter_model.safetensors"))
    base = load_file(str(base_dir / "model.safetensors"))
    tv = TaskVectors.from_folders(base_dir, [lora_dir])
    merged = tv.merge("task_arithmetic")  # one expert, weight 1, lambda 1: base + delta
    changed = 0
    for key, weight in base.items():
        stem = "base_model.model." + key.removesuffix(".weight")
        if f"{stem}.lora_A.weight" in factors:
            a, b = factors[f"{stem}.lora_A.weight"], factors[f"{stem}.lora_B.weight"]
            delta = (b.float() @ a.float()) * scaling
            assert torch.equal(tv._shared.deltas[0][key], delta), key
            assert torch.equal(merged[key], weight + delta), key
            changed += 1
        else:
            assert torch.equal(merged[key], weight), key
    assert changed == 4  # q_proj and v_proj of two layers


def test_bad_inputs_raise_named_errors(zoo):
    base, experts = zoo["base"], zoo["experts"]
    wrong = dict(experts[1])
    wrong["lm_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(IncompatibleModelsError, match=r"bad: tensor 'lm_head.weight' has shape"):
        TaskVectors(base, [experts[0], wrong], labels=["good", "bad"])
    missing = {k: v for k, v in experts[0].items() if k != "model.norm.weight"}
    with pytest.raises(IncompatibleModelsError, match=r"x: tensor 'model.norm.weight' is missing"):
        TaskVectors(base, [missing], labels=["x"])
    with pytest.raises(IncompatibleModelsError, match="extra tensor 'extra'"):
        TaskVectors(base, [{**experts[0], "extra": torch.zeros(2)}])
    tv = TaskVectors(base, experts)
    with pytest.raises(UnknownMethodError, match="unknown merge method 'tie'"):
        tv.merge("tie")
    with pytest.raises(HyperparameterError, match="density"):
        tv.merge("ties", {"density": 1.5})
    with pytest.raises(HyperparameterError, match="no hyperparameter 'alpha'"):
        tv.merge("ties", {"alpha": 1.0})
    with pytest.raises(RecipeError, match="needs a base model"):
        TaskVectors(None, experts).merge("ties")
    with pytest.raises(RecipeError, match="at most 2"):
        tv.merge("slerp")
    with pytest.raises(RecipeError, match="LiNeS"):
        tv.merge("average", lines=LiNeS(0.5, 0.5))
    with pytest.raises(RecipeError, match="device"):
        TaskVectors(base, experts, device="tpu")


def test_one_thread_and_several_give_the_same_tensors(zoo):
    from mergezoo.merge.accel.threads import torch_threads

    tensors = {}
    for threads in (1, 2):
        with torch_threads(threads):
            tv = TaskVectors(zoo["base"], zoo["experts"])
            tensors[threads] = tv.merge("dare_ties", {"density": 0.4}, seed=5)
    _assert_same(tensors[1], tensors[2])


def test_from_folders_merges_a_diffusers_component(zoo, tmp_path):
    name = "diffusion_pytorch_model.safetensors"
    base_dir = save_model(tmp_path / "base" / "unet", zoo["base"], filename=name).parent
    expert_dirs = [save_model(tmp_path / f"e{i}" / "unet", e, filename=name).parent
                   for i, e in enumerate(zoo["experts"][:2])]
    tv = TaskVectors.from_folders(base_dir, expert_dirs, component="unet")
    want = TaskVectors(zoo["base"], zoo["experts"][:2]).merge("ties", {"density": 0.3})
    _assert_same(tv.merge("ties", {"density": 0.3}), want)
    with pytest.raises(RecipeError, match="no component folder 'vae'"):
        TaskVectors.from_folders(base_dir, expert_dirs, component="vae")
