"""Every merge method against an independent reference (tests/merge/merge_refs.py), called
through the public registry API: get_method(name).fn(MergeInputs(...), **resolve(...))."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from merge_helpers import call_method
from merge_refs import (
    flat,
    gta_entry,
    keep_magnitude,
    keep_outliers,
    ref_consensus,
    ref_karcher,
    ref_gta,
    ref_linear,
    ref_model_stock,
    ref_model_stock_rows,
    ref_multislerp,
    ref_slerp,
)
from mergezoo.merge import get_method, list_methods

ATOL = 1e-5


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=1e-5)


def make(seed: int, n: int, shape=(7, 9), scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = [base + scale * torch.randn(shape, generator=g) for _ in range(n)]
    return base, models


def test_registry_has_every_data_free_method():
    names = {m.name for m in list_methods()}
    expected = {"average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp",
                "multislerp", "karcher", "breadcrumbs", "breadcrumbs_ties", "model_stock",
                "consensus"}
    assert expected <= names
    assert get_method("linear").name == "average"
    for m in list_methods():
        assert m.paper.startswith("http")
        assert m.summary, f"{m.name} has no docstring"


# --- average / linear -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["average", "linear"])
@pytest.mark.parametrize("normalize", [True, False])
def test_average_matches_weighted_mean(name, normalize):
    _, models = make(1, 3)
    weights = [1.0, 2.0, 0.5]
    got = call_method(name, None, models, params={"normalize": normalize},
                      model_params=[{"weight": w} for w in weights])
    close(got, ref_linear(models, weights, normalize))


def test_average_default_is_plain_mean():
    _, models = make(2, 4)
    got = call_method("average", None, models)
    close(got, ref_linear(models, [1.0] * 4, True))


def test_average_global_weight_applies_to_every_model():
    _, models = make(3, 2)
    got = call_method("average", None, models, params={"weight": 0.3, "normalize": False})
    close(got, ref_linear(models, [0.3, 0.3], False))


# --- task arithmetic --------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [False, True])
def test_task_arithmetic(normalize):
    base, models = make(4, 3)
    weights = [0.5, -0.3, 1.0]
    got = call_method("task_arithmetic", base, models,
                      params={"lambda": 0.7, "normalize": normalize},
                      model_params=[{"weight": w} for w in weights])
    close(got, ref_gta(base, models, weights, sign_rule=None, normalize=normalize, lambda_=0.7))


def test_task_arithmetic_defaults_add_the_sum_of_task_vectors():
    base, models = make(5, 2)
    got = call_method("task_arithmetic", base, models)
    close(got, base + (models[0] - base) + (models[1] - base))


# --- defaults -----------------------------------------------------------------------------------

# What mergekit 0.1.5 uses when a recipe omits a hyperparameter (merge_methods/registry.py,
# generalized_task_arithmetic.py: density 1.0, gamma 0.01, lambda 1.0, int8_mask false,
# normalize / rescale per method; linear.py, model_stock.py, multislerp.py, karcher.py).
MERGEKIT_DEFAULTS = {
    "task_arithmetic": {"lambda": 1.0, "normalize": False},
    "ties": {"density": 1.0, "lambda": 1.0, "normalize": True, "rescale": False},
    "dare_linear": {"density": 1.0, "lambda": 1.0, "normalize": False, "rescale": True},
    "dare_ties": {"density": 1.0, "lambda": 1.0, "normalize": False, "rescale": True},
    "breadcrumbs": {"density": 1.0, "gamma": 0.01, "lambda": 1.0, "normalize": False},
    "breadcrumbs_ties": {"density": 1.0, "gamma": 0.01, "lambda": 1.0, "normalize": False},
    "della": {"density": 1.0, "epsilon": 0.15, "lambda": 1.0, "normalize": True,
              "rescale": True},
    "della_linear": {"density": 1.0, "epsilon": 0.15, "lambda": 1.0, "normalize": False,
                     "rescale": True},
    "average": {"normalize": True},
    "model_stock": {"filter_wise": False},
    "multislerp": {"normalize_weights": True},
    "karcher": {"max_iter": 10, "tol": 1e-5},
}


@pytest.mark.parametrize("method", sorted(MERGEKIT_DEFAULTS))
def test_omitted_hyperparameters_mean_what_they_mean_in_mergekit(method):
    spec = get_method(method)
    for name, value in MERGEKIT_DEFAULTS[method].items():
        assert name in spec.hyperparameters, f"{method}: mergekit's {name} is missing"
        assert spec.hyperparameters[name].default == value, (method, name)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "breadcrumbs",
                                    "della", "della_linear"])
def test_int8_mask_is_accepted_and_changes_nothing(method):
    """mergekit's int8_mask only stores sign masks as int8: the same tensors."""
    spec = get_method(method)
    assert spec.resolve({"int8_mask": True}, [], 2) == spec.resolve({}, [], 2)
    with pytest.raises(Exception, match="int8_mask"):
        spec.resolve({"int8_mask": "yes"}, [], 2)
    with pytest.raises(Exception, match="int8_mask"):
        get_method("average").resolve({"int8_mask": True}, [], 2)


@pytest.mark.parametrize("method,sign_rule,normalize", [
    ("ties", "sum", True), ("breadcrumbs", None, False), ("breadcrumbs_ties", "sum", False),
    ("dare_linear", None, False), ("dare_ties", "sum", False)])
def test_sparsifying_methods_without_density_keep_everything_like_mergekit(method, sign_rule,
                                                                            normalize):
    base, models = make(8, 3)
    got = call_method(method, base, models)
    close(got, ref_gta(base, models, [1.0] * 3, sign_rule=sign_rule, normalize=normalize))


# --- TIES -------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("lambda_", [1.0, 1.3])
def test_ties_matches_mergekit_reference(normalize, lambda_):
    base, models = make(6, 3)
    weights = [1.0, 0.5, 2.0]
    densities = [0.3, 0.5, 0.7]
    got = call_method("ties", base, models, params={"lambda": lambda_, "normalize": normalize},
                      model_params=[{"weight": w, "density": d} for w, d in zip(weights, densities)])
    kept = [keep_magnitude(flat(m - base), d) for m, d in zip(models, densities)]
    close(got, ref_gta(base, models, weights, sign_rule="sum", normalize=normalize,
                       lambda_=lambda_, kept=kept))


@pytest.mark.parametrize("densities", [[0.3, 0.5, 0.7], [1.0, 0.2, 0.6]])
def test_ties_rescale_matches_mergekit_l1(densities):
    """mergekit's ties with rescale: true multiplies each trimmed task vector by
    |tau|_1 / |trimmed tau|_1 (sparsify.rescaled_masked_tensor, RescaleNorm.l1)."""
    base, models = make(16, 3, shape=(8, 9))
    weights = [1.0, 0.5, 2.0]
    got = call_method("ties", base, models, params={"rescale": True},
                      model_params=[{"weight": w, "density": d} for w, d in zip(weights, densities)])
    deltas = [flat(m - base) for m in models]
    kept = [keep_magnitude(d, rho) for d, rho in zip(deltas, densities)]
    scale = [sum(abs(v) for v in d) / sum(abs(d[j]) for j in k) for d, k in zip(deltas, kept)]
    close(got, ref_gta(base, models, weights, sign_rule="sum", normalize=True, kept=kept,
                       scale=scale))


def test_ties_default_normalizes_like_mergekit():
    base, models = make(7, 2)
    got = call_method("ties", base, models, params={"density": 0.5},
                      model_params=[{"weight": 1.0}, {"weight": 3.0}])
    kept = [keep_magnitude(flat(m - base), 0.5) for m in models]
    close(got, ref_gta(base, models, [1.0, 3.0], sign_rule="sum", normalize=True, kept=kept))


def test_ties_sign_election_uses_weighted_mass_and_ties_go_positive():
    base = torch.zeros(4)
    # entry 0: +1 (w=1) vs -0.4 (w=3) -> weighted sum -0.2 -> negative wins
    # entry 1: +0.6 (w=1) vs -0.2 (w=3) -> weighted sum 0.0 -> tie goes to +1
    # entry 2: -1 vs -1 -> negative, both agree
    # entry 3: +2 vs 0 -> the zero entry does not count in the divisor
    a = torch.tensor([1.0, 0.6, -1.0, 2.0])
    b = torch.tensor([-0.4, -0.2, -1.0, 0.0])
    got = call_method("ties", base, [a, b], params={"density": 1.0},
                      model_params=[{"weight": 1.0}, {"weight": 3.0}])
    expected = torch.tensor([-0.4, 0.6, -1.0, 2.0])
    close(got, expected)


def test_ties_count_rule():
    base = torch.zeros(3)
    a = torch.tensor([5.0, 5.0, -1.0])
    b = torch.tensor([-1.0, -1.0, 1.0])
    c = torch.tensor([-1.0, 2.0, 0.0])
    got = call_method("ties", base, [a, b, c], params={"density": 1.0, "sign_rule": "count"})
    ref = [gta_entry([float(x[j]) for x in (a, b, c)], [1.0] * 3, sign_rule="count",
                     normalize=True, lambda_=1.0) for j in range(3)]
    close(got, torch.tensor(ref))
    # by mass entry 0 would be positive; by count it is negative
    assert got[0] == -1.0


def test_ties_keeps_int_density_times_n_by_magnitude():
    base = torch.zeros(10)
    delta = torch.tensor([0.1, -0.9, 0.3, 0.8, -0.2, 0.05, 0.7, -0.6, 0.4, 0.5])
    got = call_method("ties", base, [delta], params={"density": 0.35})  # int(3.5) = 3
    expected = torch.zeros(10)
    for i in (1, 3, 6):
        expected[i] = delta[i]
    close(got, expected)


# --- DARE -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,sign_rule", [("dare_linear", None), ("dare_ties", "sum")])
def test_dare_with_density_one_is_deterministic_reference(method, sign_rule):
    base, models = make(8, 3)
    weights = [0.7, 1.0, -0.4]
    got = call_method(method, base, models, params={"density": 1.0, "lambda": 0.9},
                      model_params=[{"weight": w} for w in weights])
    close(got, ref_gta(base, models, weights, sign_rule=sign_rule, normalize=False, lambda_=0.9))


@pytest.mark.parametrize("method,sign_rule", [("dare_linear", None), ("dare_ties", "sum")])
def test_dare_each_entry_is_the_reference_merge_of_some_kept_subset(method, sign_rule):
    """Whatever the random draw, every output entry must be the mergekit combination of the
    rescaled deltas of the experts that kept that entry; and all-kept happens ~density^N."""
    base, models = make(9, 2, shape=(40, 50))
    density = 0.6
    weights = [1.0, 0.8]
    got = call_method(method, base, models, params={"density": density},
                      model_params=[{"weight": w} for w in weights], seed=3) - base
    b = flat(base)
    deltas = [[m - bv for m, bv in zip(flat(model), b)] for model in models]
    g = flat(got)
    both = agreeing = 0
    for j, value in enumerate(g):
        candidates = []
        for subset in itertools.product([False, True], repeat=2):
            wd = [weights[i] * deltas[i][j] / density if subset[i] else 0.0 for i in range(2)]
            candidates.append((subset, gta_entry(wd, weights, sign_rule=sign_rule,
                                                 normalize=False, lambda_=1.0)))
        matches = [s for s, v in candidates if abs(v - value) < 1e-4]
        assert matches, f"entry {j}: {value} matches no subset of kept experts"
        if deltas[0][j] * deltas[1][j] > 0:  # same sign: all-kept is unambiguous
            agreeing += 1
            both += matches == [(True, True)]
    frac = both / agreeing
    assert abs(frac - density ** 2) < 0.06, frac


@pytest.mark.parametrize("rescale", [True, False])
def test_dare_drop_statistics_and_rescale(rescale):
    base = torch.zeros(200, 250)
    delta = torch.full((200, 250), 0.5)
    density = 0.3
    got = call_method("dare_linear", base, [delta],
                      params={"density": density, "rescale": rescale}, seed=11)
    kept = got != 0
    frac = kept.float().mean().item()
    n = kept.numel()
    sigma = math.sqrt(density * (1 - density) / n)
    assert abs(frac - density) < 5 * sigma, frac
    survivor = 0.5 / (round(density * 65536) / 65536) if rescale else 0.5
    assert torch.allclose(got[kept], torch.full_like(got[kept], survivor))
    if rescale:  # the expected task vector is preserved
        assert abs(got.mean().item() - 0.5) < 0.02


def _lane(key: int, i: int) -> int:
    """The drop's 16-bit draw for entry i, written out: Wellons' lowbias32 of a Weyl counter."""
    m = 0xFFFFFFFF
    x = (i * 0x9E3779B9 + key) & m
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    x ^= x >> 16
    return x >> 16


@pytest.mark.parametrize("density", [0.3, 0.30001, 0.123456, 2e-5])
def test_dare_rescales_by_the_keep_probability_it_uses(density):
    """Survivors are divided by p = round(density * 65536) / 65536, the probability the
    16-bit draw keeps with, not by the density asked for (which it cannot draw exactly)."""
    base = torch.zeros(4000)
    delta = torch.linspace(-1, 1, 4000)
    got = call_method("dare_linear", base, [delta], params={"density": density}, seed=5)
    key = 5 * 1000 + 0  # call_method's seed for model 0
    below = round(density * 65536)
    p = below / 65536
    expect = torch.tensor([float(delta[i]) / p if _lane(key, i) < below else 0.0
                           for i in range(4000)], dtype=torch.float32)
    assert torch.equal(got, expect)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
@pytest.mark.parametrize("density", [1e-6, [0.5, 1e-7]])
def test_dare_refuses_a_density_the_draw_cannot_resolve(method, density):
    from mergezoo.errors import HyperparameterError
    with pytest.raises(HyperparameterError, match="density"):
        get_method(method).resolve({"density": density}, [], 2)


def _della_reference(delta: torch.Tensor, density: float, epsilon: float, key: int) -> list:
    """MagPrune written out: per row, rank r by magnitude (ties by position), keep with
    p = density - eps + 2 eps r / (c - 1) rounded to 1/65536 (the drop's draw), divide by p."""
    rows = delta.reshape(delta.shape[0], -1) if delta.dim() > 1 else delta.reshape(1, -1)
    c = rows.shape[1]
    out = []
    for r_i, row in enumerate(rows.tolist()):
        order = sorted(range(c), key=lambda j: (abs(row[j]), j))
        rank = {j: r for r, j in enumerate(order)}
        for j, v in enumerate(row):
            below = round(((density - epsilon) + rank[j] / (c - 1) * (2 * epsilon)) * 65536)
            out.append(v / (below / 65536) if _lane(key, r_i * c + j) < below else 0.0)
    return out


@pytest.mark.parametrize("method,sign_rule,normalize", [("della", "sum", True),
                                                         ("della_linear", None, False)])
def test_della_matches_a_written_out_magprune(method, sign_rule, normalize):
    base, models = make(17, 2, shape=(6, 11))
    densities, epsilons = [0.5, 0.3], [0.2, 0.1]
    got = call_method(method, base, models, seed=3,
                      model_params=[{"density": d, "epsilon": e}
                                    for d, e in zip(densities, epsilons)])
    dropped = [_della_reference(m - base, d, e, 3 * 1000 + i)
               for i, (m, d, e) in enumerate(zip(models, densities, epsilons))]
    zero = torch.zeros_like(base)
    expect = ref_gta(zero, [unflat_like(d, base) for d in dropped], [1.0, 1.0],
                     sign_rule=sign_rule, normalize=normalize)
    close(got, base.double() + expect)


def unflat_like(values: list, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(like.shape)


@pytest.mark.parametrize("params", [{"density": 0.9, "epsilon": 0.2},
                                    {"density": 0.1, "epsilon": 0.1}])
def test_della_refuses_epsilon_outside_the_density(params):
    from mergezoo.errors import HyperparameterError
    with pytest.raises(HyperparameterError, match="epsilon"):
        get_method("della").resolve(params, [], 2)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_is_deterministic_for_a_seed(method):
    base, models = make(10, 2, shape=(30, 30))
    a = call_method(method, base, models, params={"density": 0.5}, seed=5)
    b = call_method(method, base, models, params={"density": 0.5}, seed=5)
    c = call_method(method, base, models, params={"density": 0.5}, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dare_per_model_density():
    base = torch.zeros(100, 100)
    a = torch.ones(100, 100)
    got = call_method("dare_linear", base, [a, -a], params={"rescale": False},
                      model_params=[{"density": 1.0}, {"density": 0.25}], seed=0)
    # entries where expert 2 dropped: 1; where it kept: 0
    frac_zero = (got == 0).float().mean().item()
    assert abs(frac_zero - 0.25) < 0.03
    assert set(torch.unique(got).tolist()) <= {0.0, 1.0}


# --- SLERP ------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_base_and_one_model(t):
    base, models = make(12, 1, scale=2.0)
    got = call_method("slerp", base, models, params={"t": t})
    close(got, ref_slerp(t, base, models[0]))


def test_slerp_two_models_without_base():
    _, models = make(13, 2, scale=2.0)
    got = call_method("slerp", None, models, params={"t": 0.25})
    close(got, ref_slerp(0.25, models[0], models[1]))


def test_slerp_is_not_linear_for_distant_vectors():
    v0 = torch.tensor([1.0, 0.0, 0.0, 0.0])
    v1 = torch.tensor([0.0, 1.0, 0.0, 0.0])
    got = call_method("slerp", v0, [v1], params={"t": 0.5})
    close(got, torch.tensor([math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0]))


@pytest.mark.parametrize("cos,linear", [(0.9997, True), (0.999, False), (-0.9997, True)])
def test_slerp_colinear_fallback_threshold(cos, linear):
    sin = math.sqrt(1 - cos * cos)
    v0 = torch.tensor([2.0, 0.0, 0.0])
    v1 = torch.tensor([3.0 * cos, 3.0 * sin, 0.0])
    t = 0.4
    got = call_method("slerp", v0, [v1], params={"t": t})
    lerp = (1 - t) * v0 + t * v1
    close(got, ref_slerp(t, v0, v1))
    if linear:
        close(got, lerp)
    else:
        assert not torch.allclose(got, lerp, atol=1e-6)


# --- multislerp, karcher -----------------------------------------------------------------------

@pytest.mark.parametrize("with_base,weights,normalize", [
    (False, [1.0, 1.0, 1.0], True), (True, [0.2, 0.5, 0.3], True),
    (False, [2.0, 1.0, 0.5], True), (True, [0.6, 0.3, 0.4], False)])
def test_multislerp_matches_mergekit(with_base, weights, normalize):
    g = torch.Generator().manual_seed(14)
    base = torch.randn(5, 6, generator=g)
    models = [base + torch.randn(5, 6, generator=g) for _ in weights]
    got = call_method("multislerp", base if with_base else None, models,
                      params={"normalize_weights": normalize},
                      model_params=[{"weight": w} for w in weights])
    close(got, ref_multislerp(models, weights, base if with_base else None,
                              normalize_weights=normalize), atol=1e-5)


def test_multislerp_of_unchanged_tensor_is_the_base():
    """Three experts that leave a tensor alone: zero task vectors, no direction to average;
    the base comes out (mergekit raises there)."""
    base = torch.randn(7)
    got = call_method("multislerp", base, [base.clone() for _ in range(3)])
    close(got, base)


def test_multislerp_is_one_step_not_the_karcher_mean():
    """Three spread-out directions with unequal weights: one tangent-space step (multislerp)
    and the iterated mean (karcher) differ, and each is its mergekit namesake."""
    g = torch.Generator().manual_seed(3)
    models = [torch.randn(40, generator=g) for _ in range(3)]
    weights = [0.6, 0.3, 0.1]
    one_step = call_method("multislerp", None, models, model_params=[{"weight": w} for w in weights])
    iterated = call_method("karcher", None, models, model_params=[{"weight": w} for w in weights])
    close(one_step, ref_multislerp(models, weights), atol=1e-5)
    close(iterated, ref_karcher(models, weights), atol=1e-5)
    assert float((one_step - iterated).abs().max()) > 1e-3


@pytest.mark.parametrize("with_base", [False, True])
def test_karcher_matches_mergekit_equal_weights_base_as_a_model(with_base):
    """mergekit's karcher averages every model it is given, the base included, with equal
    weights, on the models themselves (not task vectors)."""
    g = torch.Generator().manual_seed(21)
    base = torch.randn(4, 5, generator=g)
    models = [base + 0.8 * torch.randn(4, 5, generator=g) for _ in range(3)]
    got = call_method("karcher", base if with_base else None, models,
                      params={"max_iter": 10, "tol": 1e-5})
    points = ([base] if with_base else []) + models
    close(got, ref_karcher(points, [1 / len(points)] * len(points)), atol=1e-5)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_karcher_two_models_equal_norms_is_slerp(t):
    g = torch.Generator().manual_seed(14)
    a = torch.randn(5, 6, generator=g)
    b = torch.randn(5, 6, generator=g)
    b = b * (a.norm() / b.norm())
    got = call_method("karcher", None, [a, b], model_params=[{"weight": 1 - t}, {"weight": t}],
                      params={"max_iter": 100, "tol": 1e-7})
    close(got, ref_slerp(t, a, b), atol=1e-4)


@pytest.mark.parametrize("method", ["multislerp", "karcher"])
def test_spherical_means_of_three_orthogonal_unit_vectors(method):
    # three orthogonal unit vectors with equal weights: the mean direction is (1,1,1)/sqrt(3)
    vs = [torch.eye(3)[i] for i in range(3)]
    got = call_method(method, None, vs)
    close(got, torch.full((3,), 1 / math.sqrt(3)), atol=1e-4)


# --- breadcrumbs ------------------------------------------------------------------------------

@pytest.mark.parametrize("density,gamma", [(0.6, 0.1), (0.95, 0.1), (0.5, 0.3)])
@pytest.mark.parametrize("method,sign_rule", [("breadcrumbs", None), ("breadcrumbs_ties", "sum")])
def test_breadcrumbs_matches_mergekit_magnitude_outliers(method, sign_rule, density, gamma):
    base, models = make(16, 3, shape=(5, 10))
    weights = [1.0, 0.6, 1.5]
    got = call_method(method, base, models,
                      params={"density": density, "gamma": gamma, "lambda": 1.1},
                      model_params=[{"weight": w} for w in weights])
    kept = [keep_outliers(flat(m - base), density, gamma) for m in models]
    close(got, ref_gta(base, models, weights, sign_rule=sign_rule, normalize=False,
                       lambda_=1.1, kept=kept))


def test_breadcrumbs_drops_the_largest_entries():
    base = torch.zeros(10)
    delta = torch.arange(1.0, 11.0)  # magnitudes 1..10
    got = call_method("breadcrumbs", base, [delta], params={"density": 0.5, "gamma": 0.2})
    # drop the top 2 (10, 9) and the smallest 3 (1, 2, 3): keep 4..8
    expected = torch.tensor([0, 0, 0, 4, 5, 6, 7, 8, 0, 0], dtype=torch.float32)
    close(got, expected)


def test_breadcrumbs_normalize():
    base, models = make(17, 2, shape=(50,))
    got = call_method("breadcrumbs", base, models,
                      params={"density": 0.8, "gamma": 0.1, "normalize": True},
                      model_params=[{"weight": 2.0}, {"weight": 1.0}])
    kept = [keep_outliers(flat(m - base), 0.8, 0.1) for m in models]
    close(got, ref_gta(base, models, [2.0, 1.0], sign_rule=None, normalize=True, kept=kept))


# --- model stock ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 4])
def test_model_stock(n):
    g = torch.Generator().manual_seed(18 + n)
    base = torch.randn(6, 8, generator=g)
    shared = torch.randn(6, 8, generator=g)  # correlated task vectors: cos well above 0
    models = [base + shared + 0.8 * torch.randn(6, 8, generator=g) for _ in range(n)]
    got = call_method("model_stock", base, models)
    close(got, ref_model_stock(base, models))


def test_model_stock_filter_wise():
    g = torch.Generator().manual_seed(30)
    base = torch.randn(4, 8, generator=g)
    shared = torch.randn(4, 8, generator=g)
    models = [base + shared + 0.7 * torch.randn(4, 8, generator=g) for _ in range(3)]
    got = call_method("model_stock", base, models, params={"filter_wise": True})
    close(got, ref_model_stock_rows(base, models))


def test_model_stock_ratio_formula_on_known_angle():
    # two task vectors at 60 degrees: cos = 0.5, N = 2 -> t = 1 / 1.5 = 2/3
    base = torch.zeros(2)
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.5, math.sqrt(3) / 2])
    got = call_method("model_stock", base, [a, b])
    close(got, (2 / 3) * (a + b) / 2)


# --- consensus --------------------------------------------------------------------------------

@pytest.mark.parametrize("k,mask_lambda,lambda_", [(2, 0.4, 1.0), (1, 0.8, 0.5), (3, 0.2, 1.2),
                                                  (2, 0.0, 1.0)])
def test_consensus_tall_masks(k, mask_lambda, lambda_):
    base, models = make(19, 4, shape=(6, 7))
    weights = [1.0, 0.5, 0.8, 1.2]
    got = call_method("consensus", base, models,
                      params={"k": k, "mask_lambda": mask_lambda, "lambda": lambda_},
                      model_params=[{"weight": w} for w in weights])
    close(got, ref_consensus(base, models, weights, k=k, mask_lambda=mask_lambda,
                             lambda_=lambda_))


def test_consensus_mask_is_strict_like_the_official_code():
    """At mask_lambda 0 an expert votes only where its task vector is not zero: an entry one
    of two experts leaves alone has one vote, and k = 2 drops it (with >= it had two)."""
    base = torch.zeros(3)
    a = torch.tensor([1.0, 0.5, 0.0])
    b = torch.tensor([0.0, 0.5, 0.0])
    got = call_method("consensus", base, [a, b], params={"k": 2, "mask_lambda": 0.0})
    close(got, torch.tensor([0.0, 1.0, 0.0]))
    # Equality |tau_t| == lambda |tau_MTL - tau_t| is no vote: entry 0 of a is 1 against
    # 1 * |1 - 1 + 1| = 1 at lambda 1 (b adds 1 there).
    b2 = torch.tensor([1.0, 0.5, 0.0])
    got = call_method("consensus", base, [a, b2], params={"k": 1, "mask_lambda": 1.0})
    close(got, torch.tensor([0.0, 0.0, 0.0]))


def test_consensus_removes_selfish_weights():
    base = torch.zeros(2)
    # entry 0: only expert 0 moves it (selfish); entry 1: both move it (consensus)
    a = torch.tensor([1.0, 1.0])
    b = torch.tensor([0.0, 1.0])
    got = call_method("consensus", base, [a, b], params={"k": 2, "mask_lambda": 0.5})
    close(got, torch.tensor([0.0, 2.0]))
