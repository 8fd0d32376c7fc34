"""Slice-by-slice merging (mergezoo.merge.slicing) gives exactly the tensors of merging whole
tensors, for every element-wise method, on tensors that span several slices and whose task
vectors tie at the trimming threshold across slice boundaries."""

from __future__ import annotations

import pytest
import torch

from mergezoo.merge import MergeInputs, get_method
from mergezoo.merge.ops import CHUNK, TopKCut, magnitude_bits, top_k_mask
from mergezoo.merge.registry import list_methods
from mergezoo.merge.slicing import SlicedTensor, merge_sliced

SHAPE = (700, 1000)  # 2.7 slices of CHUNK entries
N_MODELS = 3


def _inputs(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g).to(torch.bfloat16)
    # Task vectors on a coarse grid: a few distinct magnitudes, so many entries tie.
    models = [(base.float() + 0.25 * torch.randint(-4, 5, SHAPE, generator=g)).to(torch.bfloat16)
              for _ in range(N_MODELS)]
    return base, models


def _generators(spec) -> list[torch.Generator] | None:
    return [torch.Generator().manual_seed(100 + i) for i in range(N_MODELS)] if spec.random else None


CASES = [("average", {"weight": 2.0}), ("task_arithmetic", {"lambda": 0.7}),
         ("ties", {"density": 0.3}), ("ties", {"density": 0.55, "sign_rule": "count"}),
         ("ties", {"density": 1.0}), ("dare_linear", {"density": 0.4}),
         ("dare_ties", {"density": 0.6, "lambda": 1.5}), ("consensus", {"k": 2})]


@pytest.mark.parametrize("method,params", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_slice_by_slice_equals_whole_tensor(method, params):
    spec = get_method(method)
    assert spec.elementwise
    base, models = _inputs()
    kwargs = spec.resolve(params, [], N_MODELS)
    uses_base = bool(spec.needs.base)
    whole_in = MergeInputs(key="w", base=base.float() if uses_base else None,
                           models=[m.float() for m in models], generators=_generators(spec),
                           owned=True)
    whole = spec.fn(whole_in, **kwargs)
    if spec.returns == "delta":
        whole = whole + base.float()

    view = SlicedTensor("w", ([base] if uses_base else []) + models, has_base=uses_base)
    assert len(view.parts) == 3
    out = torch.empty(SHAPE, dtype=torch.float32)
    assert merge_sliced(spec, kwargs, view, out, generators=_generators(spec))
    assert torch.equal(out, whole)


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
        mask = torch.cat([cut.keep(flat[part]) for part in parts])
        assert int(mask.sum()) == k
        assert torch.equal(mask, top_k_mask(flat, k))


def test_nan_in_an_input_is_reported_not_written():
    spec = get_method("task_arithmetic")
    base, models = _inputs()
    models[1].view(-1)[CHUNK + 7] = float("nan")  # in the second slice
    view = SlicedTensor("w", [base] + models, has_base=True)
    out = torch.empty(SHAPE, dtype=torch.bfloat16)
    assert not merge_sliced(spec, spec.resolve({}, [], N_MODELS), view, out)
