"""Slice-by-slice merging (mergezoo.merge.accel.slicing), with the fused kernels and without, gives
exactly the tensors of merging whole tensors, for every element-wise method, on tensors that
span several slices and whose task vectors tie at the trimming threshold across slice
boundaries."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mergezoo.merge import MergeInputs, get_method, statistics
from mergezoo.merge.ops import CHUNK, drop_threshold, keep_lanes, top_k_mask
from mergezoo.merge.registry import list_methods
from mergezoo.merge.spec import ModelStream
from mergezoo.merge.topk import TopKCut, magnitude_bits
from mergezoo.merge.accel.slicing import SlicedTensor, merge_sliced, new_scratch

SHAPE = (700, 1000)  # 2.7 slices of CHUNK entries
N_MODELS = 3


def _inputs(seed: int = 0, n_models: int = N_MODELS,
            shape: tuple[int, int] = SHAPE) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    # Task vectors on a coarse grid: a few distinct magnitudes, so many entries tie.
    models = [(base.float() + 0.25 * torch.randint(-4, 5, shape, generator=g)).to(torch.bfloat16)
              for _ in range(n_models)]
    return base, models


def _seeds(spec, n_models: int = N_MODELS) -> list[int] | None:
    return [0xC0FFEE + 17 * i for i in range(n_models)] if spec.random else None


def _sliced(spec, kwargs, base, models, workers: int, *, fused: bool = False,
            out_dtype: torch.dtype = torch.float32, state=None) -> torch.Tensor:
    uses_base = bool(spec.needs.base)
    inputs = ([base] if uses_base else []) + models
    out = torch.empty(base.shape, dtype=out_dtype)
    scratch = [new_scratch(len(inputs), torch.float32) for _ in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        view = SlicedTensor("w", inputs, has_base=uses_base, pool=pool if workers > 1 else None,
                            fused=fused)
        assert len(view.parts) == 3
        assert (view.arrays is not None) == fused
        assert merge_sliced(spec, kwargs, view, out, seeds=_seeds(spec, len(models)),
                            model_stats=state, scratch=scratch)
    return out


def _whole(spec, kwargs, base, models, state=None) -> torch.Tensor:
    """The method's torch function on the whole tensors: the reference."""
    whole_in = MergeInputs(key="w", base=base.float() if spec.needs.base else None,
                           models=[m.float() for m in models], seeds=_seeds(spec, len(models)),
                           stats=state, owned=True)
    whole = spec.fn(whole_in, **kwargs)
    return whole + base.float() if spec.returns == "delta" else whole


CASES = [("average", {"weight": 2.0}), ("task_arithmetic", {"lambda": 0.7}),
         ("ties", {"density": 0.3}), ("ties", {"density": 0.55, "sign_rule": "count"}),
         ("ties", {"density": 1.0}), ("dare_linear", {"density": 0.4}),
         ("dare_ties", {"density": 0.6, "lambda": 1.5}), ("consensus", {"k": 2}),
         ("breadcrumbs", {"density": 0.7, "gamma": 0.05}),
         ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.2, "lambda": 1.2}),
         ("breadcrumbs", {"density": 1.0, "gamma": 0.1}),
         ("breadcrumbs", {"density": 1e-7, "gamma": 0.01}),  # keeps nothing
         ("model_stock", {}), ("model_stock", {"filter_wise": True})]


@pytest.mark.parametrize("method,params", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_slice_by_slice_is_the_same_on_one_or_two_threads(method, params):
    spec = get_method(method)
    assert spec.elementwise
    base, models = _inputs()
    kwargs = spec.resolve(params, [], N_MODELS)
    one = _sliced(spec, kwargs, base, models, workers=1)
    assert torch.equal(one, _sliced(spec, kwargs, base, models, workers=2))
    assert torch.equal(one, _whole(spec, kwargs, base, models))


FUSED = [case for case in CASES if get_method(case[0]).family is not None
         and case[0] != "consensus"] + [
    ("ties", {"density": 0.3, "weight": 0.7, "normalize": False, "lambda": 1.3}),
    ("ties", {"density": 0.4, "trim_scope": "model"}),
    ("dare_ties", {"density": 0.5, "weight": -0.5, "rescale": False}),
    ("task_arithmetic", {"weight": 0.3, "normalize": True}),
    ("average", {"weight": 0.6, "normalize": False})]


@pytest.mark.parametrize("method,params", FUSED, ids=[f"{m}-{i}" for i, (m, _) in enumerate(FUSED)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_fused_kernels_give_the_bytes_of_the_torch_functions(method, params, out_dtype):
    """Every fused method against its own torch function on whole tensors: the same bytes,
    ties at the top-k threshold and odd weights included, on one thread and two."""
    pytest.importorskip("llvmlite")
    spec = get_method(method)
    base, models = _inputs(3)
    kwargs = spec.resolve(params, [], N_MODELS)
    state = None
    if kwargs.get("trim_scope") == "model":
        state = statistics.for_model(
            spec, kwargs, ModelStream(lambda: iter([MergeInputs(
                key="w", base=base.float(), models=[m.float() for m in models])])))
    expected = _whole(spec, kwargs, base, models, state).to(out_dtype)
    for workers in (1, 2):
        got = _sliced(spec, kwargs, base, models, workers, fused=True, out_dtype=out_dtype,
                      state=state)
        assert torch.equal(got, expected), f"{method} {params}, {workers} thread(s)"


@pytest.mark.parametrize("n_models", [1, 5, 9])
@pytest.mark.parametrize("method,params", [("ties", {"density": 0.35}),
                                           ("dare_ties", {"density": 0.5}),
                                           ("task_arithmetic", {"lambda": 0.9})])
def test_fused_kernels_for_any_number_of_experts_and_any_length(method, params, n_models):
    """The kernels are generated per number of experts and run 16 entries at a time, then one
    at a time: odd counts and a length that is no multiple of 16 give the torch bytes too."""
    pytest.importorskip("llvmlite")
    spec = get_method(method)
    base, models = _inputs(n_models, n_models, shape=(701, 999))
    kwargs = spec.resolve(params, [], n_models)
    expected = _whole(spec, kwargs, base, models).to(torch.bfloat16)
    got = _sliced(spec, kwargs, base, models, 2, fused=True, out_dtype=torch.bfloat16)
    assert torch.equal(got, expected)


def test_random_drop_draws_by_entry_index_whatever_the_slicing():
    """DARE's draws hash (key, entry index): a slice draws what the whole tensor draws there."""
    whole = keep_lanes(1234, 0, 3 * CHUNK)
    assert torch.equal(keep_lanes(1234, CHUNK + 5, 1000), whole[CHUNK + 5:CHUNK + 1005])
    assert not torch.equal(keep_lanes(1235, 0, 1000), whole[:1000])
    # Uniform 16-bit lanes: the keep rate matches the density.
    assert whole.min() >= 0 and whole.max() < 65536
    assert abs(float((whole < drop_threshold(0.3)).float().mean()) - 0.3) < 0.005


def test_only_position_wise_methods_are_elementwise():
    """Methods that look at whole tensors (top-k, norms, angles) must get whole tensors."""
    elementwise = {m.name for m in list_methods() if m.elementwise}
    assert elementwise == {"average", "task_arithmetic", "ties", "dare_linear", "dare_ties",
                           "consensus", "breadcrumbs", "breadcrumbs_ties", "model_stock"}


def test_top_k_cut_applied_slice_by_slice_is_the_exact_top_k():
    g = torch.Generator().manual_seed(1)
    flat = (torch.randint(-6, 7, (3 * CHUNK + 1234,), generator=g) * 0.5).float()
    parts = [slice(i, min(i + CHUNK, flat.numel())) for i in range(0, flat.numel(), CHUNK)]
    for k in (1, 1000, flat.numel() // 3, flat.numel() - 5):
        cut = TopKCut.find(lambda part: magnitude_bits(flat[part]), flat.numel(), k, parts)
        mask = torch.cat([cut.keep(flat[part], j) for j, part in enumerate(parts)])
        assert int(mask.sum()) == k
        assert torch.equal(mask, top_k_mask(flat, k))


def test_nan_in_an_input_is_reported_not_written():
    spec = get_method("task_arithmetic")
    base, models = _inputs()
    models[1].view(-1)[CHUNK + 7] = float("nan")  # in the second slice
    view = SlicedTensor("w", [base] + models, has_base=True)
    out = torch.empty(SHAPE, dtype=torch.bfloat16)
    assert not merge_sliced(spec, spec.resolve({}, [], N_MODELS), view, out)


@pytest.mark.parametrize("spread", ["few values", "all distinct"])
def test_top_k_cuts_of_every_task_vector_at_once_are_the_exact_top_k(spread):
    """The fused bracket pass over all experts (histogram resolve for few distinct values,
    selection for many) gives each expert's exact top-k, ties by position, and says which
    slices keep all of their tied entries."""
    g = torch.Generator().manual_seed(3)
    n = 3 * CHUNK + 999
    base = torch.randn(n, generator=g).to(torch.bfloat16)
    if spread == "few values":  # bf16-like task vectors: big groups of equal magnitudes
        deltas = [torch.randint(-5, 6, (n,), generator=g) * 0.25 for _ in range(3)]
    else:
        deltas = [torch.randn(n, generator=g) for _ in range(3)]
    models = [(base.float() + d).to(torch.bfloat16) for d in deltas]
    view = SlicedTensor("w", [base] + models, has_base=True)
    ks = [n // 5, None, n // 3]
    cuts = view.top_k_cuts(ks)
    assert cuts[1] is None
    for i in (0, 2):
        flat = models[i].float() - base.float()
        mask = torch.cat([cuts[i].keep(flat[part], j) for j, part in enumerate(view.parts)])
        assert torch.equal(mask, top_k_mask(flat, ks[i]))
        bits = magnitude_bits(flat)
        assert cuts[i].equal == [int((bits[p] == cuts[i].threshold).sum()) for p in view.parts]
