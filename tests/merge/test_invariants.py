"""Invariants every implementation must keep, checked on fixed examples and with hypothesis
on random shapes and values."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merge_helpers import call_method

FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def close(a, b, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


def sample(seed, shape=(6, 5)):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    expert = base + torch.randn(shape, generator=g)
    return base, expert


# (method, params, model_params for 3 experts, with a base?)
IDENTICAL = [
    ("average", {}, None, False),
    ("average", {}, [{"weight": 1.0}, {"weight": 2.0}, {"weight": 0.5}], False),
    ("task_arithmetic", {"normalize": True}, [{"weight": 0.2}, {"weight": 0.3}, {"weight": 0.5}], True),
    ("task_arithmetic", {}, [{"weight": 1 / 3}] * 3, True),
    ("ties", {"density": 1.0}, None, True),
    ("ties", {"density": 1.0}, [{"weight": 1.0}, {"weight": 2.0}, {"weight": 0.5}], True),
    ("dare_linear", {"density": 1.0, "normalize": True}, None, True),
    ("dare_ties", {"density": 1.0, "normalize": True}, None, True),
    ("breadcrumbs", {"density": 1.0, "normalize": True}, None, True),
    ("breadcrumbs_ties", {"density": 1.0, "normalize": True}, None, True),
    ("model_stock", {}, None, True),
    ("multislerp", {}, None, False),
    ("multislerp", {}, None, True),
    ("karcher", {}, None, False),
    ("consensus", {"k": 2}, [{"weight": 1 / 3}] * 3, True),
]


@pytest.mark.parametrize("method,params,model_params,with_base", IDENTICAL)
def test_identical_experts_give_that_expert(method, params, model_params, with_base):
    base, expert = sample(1)
    got = call_method(method, base if with_base else None, [expert.clone() for _ in range(3)],
                      params=params, model_params=model_params)
    close(got, expert)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_of_identical_models_is_that_model(t):
    _, expert = sample(2)
    close(call_method("slerp", None, [expert, expert.clone()], params={"t": t}), expert)
    close(call_method("slerp", expert, [expert.clone()], params={"t": t}), expert)


def test_slerp_endpoints():
    base, expert = sample(3)
    close(call_method("slerp", base, [expert], params={"t": 0.0}), base)
    close(call_method("slerp", base, [expert], params={"t": 1.0}), expert)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear", "dare_ties",
                                    "breadcrumbs", "breadcrumbs_ties", "consensus"])
def test_lambda_zero_returns_the_base(method):
    base, e1 = sample(4)
    _, e2 = sample(5)
    got = call_method(method, base, [e1, e2], params={"lambda": 0.0})
    close(got, base)


def test_ties_density_one_agreeing_signs_is_mean_task_vector():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(5, 7, generator=g)
    magnitude = [torch.rand(5, 7, generator=g) + 0.1 for _ in range(3)]
    signs = torch.where(torch.rand(5, 7, generator=g) > 0.5, 1.0, -1.0)
    models = [base + signs * m for m in magnitude]
    got = call_method("ties", base, models, params={"density": 1.0})
    close(got, base + sum(signs * m for m in magnitude) / 3)


def test_dare_density_one_equals_task_arithmetic():
    base, e1 = sample(7)
    _, e2 = sample(8)
    mp = [{"weight": 0.6}, {"weight": 1.3}]
    dare = call_method("dare_linear", base, [e1, e2], params={"density": 1.0, "lambda": 0.8},
                       model_params=mp)
    ta = call_method("task_arithmetic", base, [e1, e2], params={"lambda": 0.8}, model_params=mp)
    close(dare, ta)
    dare_ties = call_method("dare_ties", base, [e1, e2], params={"density": 1.0, "normalize": True},
                            model_params=mp)
    ties = call_method("ties", base, [e1, e2], params={"density": 1.0}, model_params=mp)
    close(dare_ties, ties)


def test_single_expert_task_arithmetic_and_ties_full_density_give_the_expert():
    base, expert = sample(9)
    close(call_method("task_arithmetic", base, [expert]), expert)
    close(call_method("ties", base, [expert], params={"density": 1.0}), expert)


def test_merges_do_not_modify_their_inputs():
    base, e1 = sample(10)
    _, e2 = sample(11)
    copies = [base.clone(), e1.clone(), e2.clone()]
    for method in ["task_arithmetic", "ties", "dare_ties", "breadcrumbs", "model_stock",
                   "consensus", "multislerp", "karcher"]:
        call_method(method, base, [e1, e2])
        for before, after in zip(copies, [base, e1, e2]):
            assert torch.equal(before, after), method


# --- hypothesis --------------------------------------------------------------------------------

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)
values = st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)


@st.composite
def tensors(draw, n):
    shape = draw(shapes)
    size = 1
    for d in shape:
        size *= d
    out = []
    for _ in range(n):
        flat = draw(st.lists(values, min_size=size, max_size=size))
        out.append(torch.tensor(flat, dtype=torch.float32).reshape(shape))
    return out


@FAST
@given(tensors(2), st.integers(1, 4),
       st.sampled_from(["average", "task_arithmetic", "ties", "dare_ties", "model_stock"]))
def test_property_identical_experts(ts, n, method):
    base, expert = ts
    params = {"average": {}, "task_arithmetic": {"normalize": True}, "ties": {"density": 1.0},
              "dare_ties": {"density": 1.0, "normalize": True}, "model_stock": {}}[method]
    if method == "model_stock":
        n = max(n, 2)
    got = call_method(method, None if method == "average" else base,
                      [expert.clone() for _ in range(n)], params=params)
    close(got, expert, atol=1e-4, rtol=1e-5)


@FAST
@given(tensors(3), st.floats(0.05, 1.0))
def test_property_task_arithmetic_lambda_zero_is_base(ts, density):
    base, e1, e2 = ts
    close(call_method("task_arithmetic", base, [e1, e2], params={"lambda": 0.0}), base)
    close(call_method("ties", base, [e1, e2], params={"lambda": 0.0, "density": density}), base)


@FAST
@given(tensors(2), st.lists(st.floats(0.1, 3.0), min_size=1, max_size=4))
def test_property_ties_density_one_agreeing_signs_is_weighted_mean(ts, weights):
    base, direction = ts
    sign = torch.where(direction >= 0, 1.0, -1.0)
    models = [base + sign * (i + 1) * 0.5 for i in range(len(weights))]
    got = call_method("ties", base, models, params={"density": 1.0},
                      model_params=[{"weight": w} for w in weights])
    mean = sum(w * (i + 1) * 0.5 for i, w in enumerate(weights)) / sum(weights)
    close(got, base + sign * mean, atol=1e-4, rtol=1e-5)


@FAST
@given(tensors(3), st.floats(-2.0, 2.0), st.floats(-2.0, 2.0), st.floats(0.0, 2.0))
def test_property_dare_density_one_is_task_arithmetic(ts, w1, w2, lam):
    base, e1, e2 = ts
    mp = [{"weight": w1}, {"weight": w2}]
    dare = call_method("dare_linear", base, [e1, e2], params={"density": 1.0, "lambda": lam},
                       model_params=mp, seed=1)
    ta = call_method("task_arithmetic", base, [e1, e2], params={"lambda": lam}, model_params=mp)
    close(dare, ta, atol=1e-4, rtol=1e-5)


@FAST
@given(tensors(2), st.floats(0.01, 1.0))
def test_property_ties_keeps_int_density_n_entries(ts, density):
    base, expert = ts
    delta = expert - base
    got = call_method("ties", base, [expert], params={"density": density}) - base
    n = delta.numel()
    k = max(1, int(density * n))
    nonzero = int((delta != 0).sum())
    kept = int((got != 0).sum())
    assert kept == min(k, nonzero) if density < 1 else kept == nonzero
    # every kept entry is at least as large as every dropped one
    kept_mask = got != 0
    if kept_mask.any() and (~kept_mask & (delta != 0)).any():
        assert delta[kept_mask].abs().min() >= delta[~kept_mask].abs().max()


@FAST
@given(tensors(2), st.floats(0.0, 1.0))
def test_property_slerp_preserves_norm_between_equal_norm_vectors(ts, t):
    a, b = ts
    if a.norm() < 1e-3 or b.norm() < 1e-3:
        return
    b = b * (a.norm() / b.norm())
    got = call_method("slerp", None, [a, b], params={"t": t})
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    if abs(cos) < 0.999:  # off the lerp fallback, the arc keeps the norm
        assert abs(float(got.norm()) - float(a.norm())) <= 1e-3 * float(a.norm()) + 1e-4
