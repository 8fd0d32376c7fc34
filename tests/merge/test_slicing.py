"""Slice-by-slice merging (mergezoo.merge.slicing) gives exactly the tensors of merging whole
tensors, for every element-wise method, on tensors that span several slices and whose task
vectors tie at the trimming threshold across slice boundaries."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mergezoo.merge import MergeInputs, get_method
from mergezoo.merge.ops import CHUNK, TopKCut, magnitude_bits, top_k_mask
from mergezoo.merge.registry import list_methods
from mergezoo.merge.slicing import SlicedTensor, merge_sliced, new_scratch

SHAPE = (700, 1000)  # 2.7 slices of CHUNK entries
N_MODELS = 3


def _inputs(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g).to(torch.bfloat16)
    # Task vectors on a coarse grid: a few distinct magnitudes, so many entries tie.
    models = [(base.float() + 0.25 * torch.randint(-4, 5, SHAPE, generator=g)).to(torch.bfloat16)
              for _ in range(N_MODELS)]
    return base, models


def _generators(spec, slice_index: int = 0) -> list[torch.Generator] | None:
    if not spec.random:
        return None
    return [torch.Generator().manual_seed(100 * slice_index + i) for i in range(N_MODELS)]


def _sliced(spec, kwargs, base, models, workers: int) -> torch.Tensor:
    uses_base = bool(spec.needs.base)
    inputs = ([base] if uses_base else []) + models
    out = torch.empty(SHAPE, dtype=torch.float32)
    scratch = [new_scratch(len(inputs), torch.float32) for _ in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        view = SlicedTensor("w", inputs, has_base=uses_base, pool=pool if workers > 1 else None)
        assert len(view.parts) == 3
        assert merge_sliced(spec, kwargs, view, out, generators=lambda j: _generators(spec, j),
                            scratch=scratch)
    return out


CASES = [("average", {"weight": 2.0}), ("task_arithmetic", {"lambda": 0.7}),
         ("ties", {"density": 0.3}), ("ties", {"density": 0.55, "sign_rule": "count"}),
         ("ties", {"density": 1.0}), ("dare_linear", {"density": 0.4}),
         ("dare_ties", {"density": 0.6, "lambda": 1.5}), ("consensus", {"k": 2})]


@pytest.mark.parametrize("method,params", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_slice_by_slice_is_the_same_on_one_or_two_threads(method, params):
    spec = get_method(method)
    assert spec.elementwise
    base, models = _inputs()
    kwargs = spec.resolve(params, [], N_MODELS)
    one = _sliced(spec, kwargs, base, models, workers=1)
    assert torch.equal(one, _sliced(spec, kwargs, base, models, workers=2))
    if spec.random:  # DARE: each slice draws from its own generators; check what it kept
        delta = one - base.float()
        kept = (delta != 0) & (torch.stack([m.float() for m in models]) != base.float()).any(0)
        assert 0.2 < float(kept.float().mean()) < 1.0
        return
    whole_in = MergeInputs(key="w", base=base.float() if spec.needs.base else None,
                           models=[m.float() for m in models], owned=True)
    whole = spec.fn(whole_in, **kwargs)
    if spec.returns == "delta":
        whole = whole + base.float()
    assert torch.equal(one, whole)


def test_dare_slices_draw_what_a_whole_tensor_of_that_slice_draws():
    """A slice's random drop is the drop of that slice alone with its slice's generators."""
    spec = get_method("dare_linear")
    base, models = _inputs()
    kwargs = spec.resolve({"density": 0.3}, [], N_MODELS)
    merged = _sliced(spec, kwargs, base, models, workers=2).view(-1)
    second = slice(CHUNK, 2 * CHUNK)
    alone = spec.fn(MergeInputs(key="w", base=base.view(-1)[second].float(),
                                models=[m.view(-1)[second].float() for m in models],
                                generators=_generators(spec, 1)), **kwargs)
    assert torch.equal(merged[second], alone + base.view(-1)[second].float())


def test_only_position_wise_methods_are_elementwise():
    """Methods that look at whole tensors (top-k, norms, angles) must get whole tensors."""
    elementwise = {m.name for m in list_methods() if m.elementwise}
    assert elementwise == {"average", "task_arithmetic", "ties", "dare_linear", "dare_ties",
                           "consensus"}


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
