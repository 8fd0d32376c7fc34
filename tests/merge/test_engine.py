"""The streaming engine end to end on tiny safetensors folders: merge_models / merge_sources
against per-tensor references, whole-model TIES trimming, LiNeS, per-layer settings,
sharded inputs and outputs, dtypes, seeds, copied files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from merge_helpers import call_method, load_folder, perturb, save_model, toy_state
from merge_refs import (flat, keep_magnitude, lines_scalings, mergekit_gradient, mergekit_t,
                        ref_gta, ref_linear, ref_slerp)
from mergezoo.merge import LiNeS, merge_models, merge_sources, open_source
from mergezoo.errors import RecipeError

# Where mergekit evaluates each toy tensor's gradient (t): layers l/(L-1), all else 0.
LAYER_POS = {key: mergekit_t(key, 3) for key in toy_state(0)}


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=1e-5)


def run(toy_zoo, method, out="out", **kw):
    kw.setdefault("progress", False)
    base = kw.pop("base", toy_zoo["base"])
    experts = kw.pop("experts", toy_zoo["experts"])
    out_dir = toy_zoo["root"] / out
    result = merge_models(method, experts, base=base, out_dir=out_dir, **kw)
    return result, load_folder(out_dir)


# --- whole merges against references -----------------------------------------------------------

def test_ties_merge_matches_reference_for_every_tensor(toy_zoo):
    densities = [0.3, 0.5, 0.8]
    weights = [1.0, 0.7, 1.4]
    result, merged = run(toy_zoo, "ties", params={"lambda": 1.2},
                         model_params=[{"weight": w, "density": d}
                                       for w, d in zip(weights, densities)])
    assert result.n_tensors == len(toy_zoo["base_state"])
    assert set(merged) == set(toy_zoo["base_state"])
    for key, base in toy_zoo["base_state"].items():
        models = [e[key] for e in toy_zoo["expert_states"]]
        kept = [keep_magnitude(flat(m - base), d) for m, d in zip(models, densities)]
        close(merged[key], ref_gta(base, models, weights, sign_rule="sum", normalize=True,
                                   lambda_=1.2, kept=kept))


def test_ties_rescale_through_the_engine_matches_mergekit_l1(toy_zoo):
    densities = [0.3, 0.5, 0.8]
    _, merged = run(toy_zoo, "ties", params={"rescale": True, "int8_mask": True},
                    model_params=[{"density": d} for d in densities])
    for key, base in toy_zoo["base_state"].items():
        models = [e[key] for e in toy_zoo["expert_states"]]
        deltas = [flat(m - base) for m in models]
        kept = [keep_magnitude(d, rho) for d, rho in zip(deltas, densities)]
        scale = [sum(map(abs, d)) / sum(abs(d[j]) for j in k) for d, k in zip(deltas, kept)]
        close(merged[key], ref_gta(base, models, [1.0] * 3, sign_rule="sum", normalize=True,
                                   kept=kept, scale=scale))


def test_average_without_base_matches_weighted_mean(toy_zoo):
    _, merged = run(toy_zoo, "linear", base=None,
                    model_params=[{"weight": 1.0}, {"weight": 2.0}, {"weight": 3.0}])
    for key in toy_zoo["base_state"]:
        models = [e[key] for e in toy_zoo["expert_states"]]
        close(merged[key], ref_linear(models, [1.0, 2.0, 3.0], True))


DETERMINISTIC = ["average", "task_arithmetic", "ties", "slerp", "multislerp", "breadcrumbs",
                 "breadcrumbs_ties", "model_stock", "consensus"]


@pytest.mark.parametrize("method", DETERMINISTIC + ["dare_linear", "dare_ties"])
def test_engine_applies_the_method_to_every_tensor(toy_zoo, method):
    """The engine's output is, tensor by tensor, the registered method applied to that tensor
    (random methods at density 1, where they are deterministic)."""
    experts = toy_zoo["experts"][:1] if method == "slerp" else toy_zoo["experts"]
    params = {"density": 1.0} if method.startswith("dare") else {}
    if method == "breadcrumbs" or method == "breadcrumbs_ties":
        params = {"density": 0.5, "gamma": 0.1}
    _, merged = run(toy_zoo, method, experts=experts, params=params)
    n = len(experts)
    for key, base in toy_zoo["base_state"].items():
        models = [e[key] for e in toy_zoo["expert_states"][:n]]
        close(merged[key], call_method(method, base, models, params=params, key=key))


def test_ties_trim_scope_model_uses_one_threshold_per_expert(toy_zoo):
    density = 0.3
    _, merged = run(toy_zoo, "ties", params={"density": density, "trim_scope": "model"})
    keys = list(toy_zoo["base_state"])
    base_flat = {k: flat(v) for k, v in toy_zoo["base_state"].items()}
    thresholds = []
    for e in toy_zoo["expert_states"]:
        mags = sorted((abs(x - b) for k in keys for x, b in zip(flat(e[k]), base_flat[k])),
                      reverse=True)
        # The paper's code: the (n - int(density n))-th smallest magnitude, i.e. the
        # (int(density n) + 1)-th largest, and every entry at least that large.
        thresholds.append(mags[int(density * len(mags))])
    kept_fraction = []
    for key in keys:
        base = toy_zoo["base_state"][key]
        models = [e[key] for e in toy_zoo["expert_states"]]
        kept = []
        for m, thr in zip(models, thresholds):
            d = flat(m - base)
            kept.append({i for i, v in enumerate(d) if abs(v) >= thr})
        kept_fraction.append(len(kept[0]) / base.numel())
        close(merged[key], ref_gta(base, models, [1.0] * 3, sign_rule="sum", normalize=True,
                                   kept=kept))
    # a whole-model threshold keeps different fractions of different tensors
    assert max(kept_fraction) - min(kept_fraction) > 0.05


def paper_ties(task_vectors: torch.Tensor, density: float, lam: float) -> torch.Tensor:
    """The TIES paper's ties_merging on [tasks, all parameters], in float64: keep per task
    every entry whose magnitude is at least the (n - int(density n))-th smallest; elect
    sign(sum), a zero sum taking the sign held by most entries (sign of the sum of the elected
    signs); average the entries of the elected sign (dis-mean); times lambda."""
    n = task_vectors.shape[1]
    kth = n - int(density * n)
    thresholds = task_vectors.abs().sort(dim=1).values[:, kth - 1:kth]
    trimmed = task_vectors * (task_vectors.abs() >= thresholds)
    signs = trimmed.sum(0).sign()
    signs[signs == 0] = signs.sum().sign()
    agree = torch.where(signs > 0, trimmed > 0, trimmed < 0)
    picked = trimmed * agree
    return lam * picked.sum(0) / (picked != 0).sum(0).clamp(min=1)


@pytest.mark.parametrize("density", [0.2, 0.35])
def test_ties_trim_scope_model_is_the_papers_code(toy_zoo, density):
    """Against the paper's procedure on the whole flattened model (number of entries kept
    included). Its zero-vote rule (a zero sign sum takes the model-wide majority sign) is
    the one place mergezoo differs (a tie goes +1): with random task vectors no vote sums to
    exactly zero, which the assertion below checks."""
    _, merged = run(toy_zoo, "ties", params={"density": density, "trim_scope": "model",
                                             "lambda": 1.1})
    keys = list(toy_zoo["base_state"])
    base = torch.cat([toy_zoo["base_state"][k].double().reshape(-1) for k in keys])
    tvs = torch.stack([torch.cat([e[k].double().reshape(-1) for k in keys]) - base
                       for e in toy_zoo["expert_states"]])
    expect = base + paper_ties(tvs, density, 1.1)
    got = torch.cat([merged[k].double().reshape(-1) for k in keys])
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    kth = tvs.shape[1] - int(density * tvs.shape[1])
    thr = tvs.abs().sort(dim=1).values[:, kth - 1:kth]
    assert bool(((tvs * (tvs.abs() >= thr)).sum(0) != 0).any())


def test_ties_trim_scope_model_differs_from_tensor_scope(tmp_path):
    # two tensors with very different delta scales: per-tensor trimming keeps 50% of each,
    # whole-model trimming keeps only the large-scale tensor's entries
    base = {"a.weight": torch.zeros(8, 8), "b.weight": torch.zeros(8, 8)}
    g = torch.Generator().manual_seed(0)
    expert = {"a.weight": torch.randn(8, 8, generator=g) * 10,
              "b.weight": torch.randn(8, 8, generator=g) * 0.01}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "e", expert)
    for scope in ("tensor", "model"):
        merge_models("ties", [tmp_path / "e"], base=tmp_path / "base", out_dir=tmp_path / scope,
                     params={"density": 0.5, "trim_scope": scope}, progress=False)
    per_tensor = load_folder(tmp_path / "tensor")
    whole = load_folder(tmp_path / "model")
    assert int((per_tensor["b.weight"] != 0).sum()) == 32
    # the paper keeps int(0.5 * 128) + 1 = 65 entries: all 64 of a and the largest of b
    assert int((whole["b.weight"] != 0).sum()) == 1
    assert int((whole["a.weight"] != 0).sum()) == 64


# --- LiNeS and per-layer settings -----------------------------------------------------------------

def test_lines_scales_each_layer_task_vector(toy_zoo):
    alpha, beta = 0.2, 0.6
    _, merged = run(toy_zoo, "task_arithmetic", lines=LiNeS(alpha, beta),
                    params={"lambda": 0.5})
    scales = lines_scalings(list(toy_zoo["base_state"]), alpha, beta, num_blocks=3)
    assert scales["lm_head.weight"] == scales["model.norm.weight"] == alpha  # outside the blocks
    for key, base in toy_zoo["base_state"].items():
        tv = sum(e[key] - base for e in toy_zoo["expert_states"]) * 0.5
        close(merged[key], base + scales[key] * tv)


def test_lines_with_ties(toy_zoo):
    _, plain = run(toy_zoo, "ties", out="plain", params={"density": 0.5})
    _, scaled = run(toy_zoo, "ties", out="lines", params={"density": 0.5}, lines=LiNeS(0.1, 0.9))
    scales = lines_scalings(list(toy_zoo["base_state"]), 0.1, 0.9, num_blocks=3)
    for key, base in toy_zoo["base_state"].items():
        close(scaled[key] - base, scales[key] * (plain[key] - base))


def test_lines_refused_for_methods_without_task_vector(toy_zoo):
    with pytest.raises(RecipeError, match="LiNeS"):
        run(toy_zoo, "average", lines=LiNeS(0.5, 0.5))
    assert not (toy_zoo["root"] / "out").exists()


def test_gradient_setting_interpolates_over_layers(toy_zoo):
    gradient = [0.0, 1.0, 0.5]
    _, merged = run(toy_zoo, "task_arithmetic", params={"lambda": gradient})
    for key, base in toy_zoo["base_state"].items():
        lam = mergekit_gradient(gradient, mergekit_t(key, 3))
        tv = sum(e[key] - base for e in toy_zoo["expert_states"])
        close(merged[key], base + lam * tv)


def test_gradient_puts_head_and_final_norm_at_its_start_like_mergekit(toy_zoo):
    """slerp with t: [0, 0.5, 1]: mergekit plans the weights after the last layer (lm_head,
    the final norm) with t = 0, so they are the first model's (the base's), not the other's."""
    _, merged = run(toy_zoo, "slerp", experts=toy_zoo["experts"][:1],
                    params={"t": [0.0, 0.5, 1.0]})
    base, expert = toy_zoo["base_state"], toy_zoo["expert_states"][0]
    for key in base:
        t = mergekit_gradient([0.0, 0.5, 1.0], mergekit_t(key, 3))
        close(merged[key], ref_slerp(t, base[key], expert[key]))
    for key in ("lm_head.weight", "model.norm.weight", "model.embed_tokens.weight"):
        close(merged[key], base[key])
    close(merged["model.layers.2.mlp.weight"], expert["model.layers.2.mlp.weight"])


def test_filter_rules_pick_the_first_matching_rule(toy_zoo):
    weight_rules = [{"filter": "attn", "value": 0.25}, {"filter": "mlp", "value": [0.0, 1.0]},
                    {"value": 1.0}]
    _, merged = run(toy_zoo, "task_arithmetic", experts=toy_zoo["experts"][:1],
                    model_params=[{"weight": weight_rules}])
    for key, base in toy_zoo["base_state"].items():
        if "attn" in key:
            w = 0.25
        elif "mlp" in key:
            w = LAYER_POS[key]
        else:
            w = 1.0
        close(merged[key], base + w * (toy_zoo["expert_states"][0][key] - base))


def test_per_layer_density_for_ties(toy_zoo):
    _, merged = run(toy_zoo, "ties", experts=toy_zoo["experts"][:1],
                    params={"density": [{"filter": "lm_head", "value": 0.1}, {"value": 1.0}]})
    base = toy_zoo["base_state"]
    expert = toy_zoo["expert_states"][0]
    head_delta = merged["lm_head.weight"] - base["lm_head.weight"]
    assert int((head_delta != 0).sum()) == int(0.1 * head_delta.numel())
    close(merged["model.layers.1.mlp.weight"], expert["model.layers.1.mlp.weight"])


def test_gradient_on_single_layer_model_uses_t_1_like_mergekit(tmp_path):
    """mergekit (plan.py, plan_slice) evaluates gradients at t = 1 when a model has a single
    layer (`t = idx / (num_layers - 1) if num_layers > 1 else 1`); a gradient [0, 1] therefore
    gives that layer the value 1, not 0."""
    base = {"model.layers.0.w": torch.zeros(4)}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "e", {"model.layers.0.w": torch.ones(4)})
    merge_models("task_arithmetic", [tmp_path / "e"], base=tmp_path / "base",
                 out_dir=tmp_path / "out", params={"lambda": [0.0, 1.0]}, progress=False)
    close(load_folder(tmp_path / "out")["model.layers.0.w"], torch.ones(4))


# --- sharding, dtypes, files ---------------------------------------------------------------------

def save_sharded(folder: Path, tensors: dict[str, torch.Tensor], n_shards: int = 3) -> None:
    folder.mkdir(parents=True)
    keys = list(tensors)
    names = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: tensors[k] for k in keys[i::n_shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))


def test_sharded_inputs_and_sharded_output(toy_zoo, tmp_path):
    save_sharded(tmp_path / "sb", toy_zoo["base_state"])
    for i, e in enumerate(toy_zoo["expert_states"][:2]):
        save_sharded(tmp_path / f"se{i}", e, n_shards=2)
    out = tmp_path / "sharded-out"
    result = merge_models("task_arithmetic", [tmp_path / "se0", tmp_path / "se1"],
                          base=tmp_path / "sb", out_dir=out, max_shard_size=600, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2
    assert set(index["weight_map"]) == set(toy_zoo["base_state"])
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in toy_zoo["base_state"].values())
    assert "model.safetensors.index.json" in result.files
    for name in shards:
        with safe_open(str(out / name), "pt") as f:
            assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == name}
    merged = load_folder(out)
    for key, base in toy_zoo["base_state"].items():
        tv = sum(e[key] - base for e in toy_zoo["expert_states"][:2])
        close(merged[key], base + tv)
    # the same merge unsharded gives the same tensors
    merge_models("task_arithmetic", toy_zoo["experts"][:2], base=toy_zoo["base"],
                 out_dir=tmp_path / "single", progress=False)
    single = load_folder(tmp_path / "single")
    assert list((tmp_path / "single").glob("*.safetensors")) == [tmp_path / "single" / "model.safetensors"]
    for key in single:
        assert torch.equal(single[key], merged[key])


def test_output_dtype_follows_inputs_unless_out_dtype(tmp_path):
    base = toy_state(0, torch.bfloat16)
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "e0", perturb(base, 0))
    save_model(tmp_path / "e1", perturb(base, 1))
    experts = [tmp_path / "e0", tmp_path / "e1"]
    merge_models("ties", experts, base=tmp_path / "base", out_dir=tmp_path / "bf", progress=False)
    merge_models("ties", experts, base=tmp_path / "base", out_dir=tmp_path / "f16",
                 out_dtype=torch.float16, progress=False)
    bf, f16 = load_folder(tmp_path / "bf"), load_folder(tmp_path / "f16")
    assert {v.dtype for v in bf.values()} == {torch.bfloat16}
    assert {v.dtype for v in f16.values()} == {torch.float16}
    for key in bf:  # same values up to the output rounding
        close(bf[key].float(), f16[key].float(), atol=3e-2)


def test_integer_buffers_are_copied_from_the_reference(tmp_path):
    base = {"w": torch.randn(3, 3), "position_ids": torch.arange(7).unsqueeze(0)}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "e", {"w": base["w"] + 1, "position_ids": torch.arange(7).unsqueeze(0)})
    merge_models("task_arithmetic", [tmp_path / "e"], base=tmp_path / "base",
                 out_dir=tmp_path / "out", progress=False)
    merged = load_folder(tmp_path / "out")
    assert merged["position_ids"].dtype == torch.int64
    assert torch.equal(merged["position_ids"], base["position_ids"])
    close(merged["w"], base["w"] + 1)


def test_dare_through_engine_is_seeded_per_run_and_per_tensor(tmp_path):
    base = {"a.weight": torch.zeros(40, 40), "b.weight": torch.zeros(40, 40)}
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "e", {"a.weight": torch.ones(40, 40), "b.weight": torch.ones(40, 40)})
    outs = {}
    for name, seed in (("s0", 0), ("s0bis", 0), ("s1", 1)):
        merge_models("dare_linear", [tmp_path / "e"], base=tmp_path / "base",
                     out_dir=tmp_path / name, params={"density": 0.5}, seed=seed, progress=False)
        outs[name] = load_folder(tmp_path / name)
    assert torch.equal(outs["s0"]["a.weight"], outs["s0bis"]["a.weight"])
    assert not torch.equal(outs["s0"]["a.weight"], outs["s1"]["a.weight"])
    # identical tensors under different names are dropped differently
    assert not torch.equal(outs["s0"]["a.weight"], outs["s0"]["b.weight"])
    for out in outs.values():
        assert set(torch.unique(out["a.weight"]).tolist()) == {0.0, 2.0}


def test_config_and_tokenizer_files_are_copied_with_recipe_and_provenance(toy_zoo):
    base = toy_zoo["base"]
    (base / "tokenizer.json").write_text("{}")
    (base / "generation_config.json").write_text('{"do_sample": false}')
    (base / "README.md").write_text("base card")
    result, _ = run(toy_zoo, "ties", params={"density": 0.4})
    out = toy_zoo["root"] / "out"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "generation_config.json", "model.safetensors",
            "mergezoo_recipe.yaml", "mergezoo_merge.json"} <= names
    assert "README.md" not in names
    provenance = json.loads((out / "mergezoo_merge.json").read_text())
    assert provenance["method"] == "ties"
    assert provenance["hyperparameters"]["density"] == [0.4, 0.4, 0.4]
    import hashlib
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert provenance["output_sha256"]["model.safetensors"] == digest == result.sha256["model.safetensors"]
    assert "merge_method: ties" in (out / "mergezoo_recipe.yaml").read_text()


def test_base_listed_among_models_is_left_out_like_mergekit(toy_zoo):
    _, with_base = run(toy_zoo, "task_arithmetic", out="a",
                       experts=[toy_zoo["base"]] + toy_zoo["experts"][:2])
    _, without = run(toy_zoo, "task_arithmetic", out="b", experts=toy_zoo["experts"][:2])
    for key in with_base:
        assert torch.equal(with_base[key], without[key])


def test_merge_sources_directly_with_open_source(toy_zoo):
    out = toy_zoo["root"] / "direct"
    result = merge_sources("task_arithmetic", [open_source(p) for p in toy_zoo["experts"]],
                           base=open_source(toy_zoo["base"]), out_dir=out,
                           params={"lambda": 0.0}, device="cpu", progress=False)
    assert result.files == ["model.safetensors"]
    assert result.n_parameters == sum(v.numel() for v in toy_zoo["base_state"].values())
    merged = load_folder(out)
    for key, base in toy_zoo["base_state"].items():
        assert torch.equal(merged[key], base)


def test_overwrite_replaces_existing_output(toy_zoo):
    out = toy_zoo["root"] / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    run(toy_zoo, "average", base=None, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]


def test_progress_bar_can_be_quiet(toy_zoo, capsys):
    run(toy_zoo, "average", base=None, progress=False)
    captured = capsys.readouterr()
    assert "merge average" not in captured.err
    run(toy_zoo, "average", out="loud", base=None, progress=True)
    assert "merge average" in capsys.readouterr().err


@pytest.mark.parametrize("method,params", [("ties", {"density": 0.3}),
                                           ("ties", {"density": 0.3, "trim_scope": "model"}),
                                           ("dare_ties", {"density": 0.5}),
                                           ("dare_linear", {"density": 0.4, "lambda": 0.9}),
                                           ("average", {}),
                                           ("task_arithmetic", {"lambda": 0.8})])
def test_slice_by_slice_merge_is_the_same_on_any_number_of_threads(tmp_path, monkeypatch,
                                                                  method, params):
    """Tensors of several engine slices, merged with 1 and with 2 torch threads (the engine
    then merges slices side by side), with the torch functions and with the fused kernels:
    byte-identical outputs, and TIES keeps exactly its k."""
    g = torch.Generator().manual_seed(3)
    base = {"big.weight": torch.randn(700, 1000, generator=g).to(torch.bfloat16),
            "small.weight": torch.randn(10, 10, generator=g).to(torch.bfloat16)}
    save_model(tmp_path / "base", base)
    experts = []
    for i in range(2):  # coarse task vectors: many ties at the trimming threshold
        tensors = {k: (v.float() + 0.25 * torch.randint(-4, 5, v.shape, generator=g)).to(v.dtype)
                   for k, v in base.items()}
        experts.append(save_model(tmp_path / f"e{i}", tensors))
    previous = torch.get_num_threads()
    shas = []
    try:
        for threads, kernels in [(1, "eager"), (2, "eager"), (1, "fused"), (2, "fused")]:
            monkeypatch.setenv("MERGEZOO_KERNELS", kernels)
            torch.set_num_threads(threads)
            result = merge_models(method, experts, base=tmp_path / "base",
                                  out_dir=tmp_path / f"out{threads}{kernels}", params=params,
                                  progress=False)
            shas.append(result.sha256)
            assert torch.get_num_threads() == threads  # restored after the merge
    finally:
        torch.set_num_threads(previous)
    assert all(sha == shas[0] for sha in shas[1:])
    if method == "ties" and "trim_scope" not in params:
        merged = load_folder(tmp_path / "out1eager")["big.weight"].float()
        ref = call_method("ties", base["big.weight"].float(),
                          [load_folder(e)["big.weight"].float() for e in experts],
                          params=params)
        assert torch.equal(merged, ref.to(torch.bfloat16).float())


def test_whole_model_ties_thresholds_from_a_sampled_bracket_are_exact(tmp_path, monkeypatch):
    """TIES trimming over the whole model, with the fused kernels: thresholds from a strided
    sample's bracket and one gathering pass (`global_trim._bracketed`) are the exact k-th
    largest magnitudes that the radix passes find, so the merge is byte-identical."""
    from mergezoo.merge.accel import global_trim, kernels as fused_kernels

    g = torch.Generator().manual_seed(5)
    base = {f"layer{i}.weight": torch.randn(300 + 40 * i, 257, generator=g).to(torch.bfloat16)
            for i in range(4)}
    save_model(tmp_path / "base", base)
    experts = [save_model(tmp_path / f"e{j}", {
        k: (v.float() + s * torch.randint(-4, 5, v.shape, generator=g)).to(v.dtype)
        for k, v in base.items()}) for j, s in enumerate((0.25, 0.5, 0.125))]
    monkeypatch.setattr(global_trim, "SAMPLE", 5000)  # a strided sample, not every entry
    scans = []
    real_scan = fused_kernels.band_scan
    monkeypatch.setattr(fused_kernels, "band_scan", lambda *a: scans.append(1) or real_scan(*a))
    shas = {}
    for mode in ("eager", "fused"):
        monkeypatch.setenv("MERGEZOO_KERNELS", mode)
        shas[mode] = merge_models("ties", experts, base=tmp_path / "base",
                                  out_dir=tmp_path / mode, progress=False,
                                  params={"density": 0.2, "trim_scope": "model"}).sha256
    assert scans  # the fused merge took the bracketed pass
    assert shas["fused"] == shas["eager"]


# --- one entry shape: a recipe plus options, resolved once ------------------------------------

def test_a_recipe_plus_options_is_the_one_entry(toy_zoo, monkeypatch):
    """merge_models builds the recipe that run_recipe runs; options given as an object or as
    keywords are the same; the recipe's hyperparameters are checked once, in the plan."""
    from mergezoo.merge import MergeOptions, recipe_of, registry, run_recipe

    spec = registry.get_method("ties")
    resolved = []
    real_resolve = type(spec).resolve
    monkeypatch.setattr(type(spec), "resolve",
                        lambda self, *a: resolved.append(self.name) or real_resolve(self, *a))
    params = {"density": 0.5, "lambda": 0.8}
    root = toy_zoo["root"]
    recipe = recipe_of("ties", toy_zoo["experts"], base=toy_zoo["base"], params=params)
    a = run_recipe(recipe, out_dir=root / "a",
                   options=MergeOptions(device="cpu", kernels="eager", progress=False))
    assert resolved == ["ties"]
    b = merge_models("ties", toy_zoo["experts"], base=toy_zoo["base"], out_dir=root / "b",
                     params=params, device="cpu", kernels="fused", progress=False)
    assert a.sha256 == b.sha256  # the kernels never change the bytes
    assert (root / "a" / "mergezoo_recipe.yaml").read_text() == \
        (root / "b" / "mergezoo_recipe.yaml").read_text()


def test_unknown_kernel_mode_is_a_configuration_error():
    from mergezoo.errors import ConfigurationError
    from mergezoo.merge import MergeOptions

    with pytest.raises(ConfigurationError, match="'turbo'.*auto, fused, eager"):
        MergeOptions(kernels="turbo")
    assert MergeOptions(kernels=" Fused ").kernels == "fused"
