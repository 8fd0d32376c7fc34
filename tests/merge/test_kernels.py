"""The fused CPU kernels (mergezoo.merge.accel.kernels) on their own: the policy that picks them,
their finite checks, and the top-k bracket pass against plain torch references. (That each
method's fused form gives the bytes of its torch function is in test_slicing.py.)"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mergezoo.merge.accel import kernels
from mergezoo.merge.topk import magnitude_bits

pytest.importorskip("llvmlite")


def _bf16(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def test_auto_uses_the_kernels_only_when_they_save_more_than_loading_them(monkeypatch):
    # The mode is an argument: the environment is read only by MergeOptions, as a default.
    monkeypatch.setenv("MERGEZOO_KERNELS", "eager")
    per_billion = 5.0  # seconds saved per 1e9 parameters x models
    break_even = kernels.LOAD_SECONDS / per_billion * 1e9
    assert not kernels.worth_it(per_billion, int(break_even * 0.9))
    assert kernels.worth_it(per_billion, int(break_even * 1.1))
    assert not kernels.worth_it(0.0, 10**12)
    assert kernels.worth_it(0.0, 1, "fused")
    assert not kernels.worth_it(100.0, 10**12, "eager")


def test_load_reports_which_dtypes_the_kernels_read():
    assert kernels.load({torch.bfloat16}, {torch.bfloat16, torch.float32}, n_models=2,
                        has_base=True)
    assert not kernels.load({torch.float16}, {torch.float16}, n_models=2, has_base=True)


@pytest.mark.parametrize("where", ["base", "expert", "dropped"])
def test_a_non_finite_input_fails_the_slice_even_where_it_would_not_reach_the_output(where):
    n = 5000
    base = torch.randn(n)
    experts = [base + 0.1 * torch.randn(n) for _ in range(2)]
    target = base if where == "base" else experts[1]
    target[4321] = float("inf") if where == "base" else float("nan")
    plan = kernels.Combine.linear([1.0, 1.0])
    if where == "dropped":  # drop everything of that expert: its NaN never reaches the sum
        # (a keep threshold of 0, which no recipe density gives: those are refused)
        plan = dataclasses.replace(kernels.Combine.linear([1.0, 0.0]).dropped(
            [1.0, 0.5], [1, 2], rescale=False), drop_below=np.asarray([-1, 0], np.int64))
    out = np.empty(n, np.float32)
    assert not kernels.merge_slice(plan, base.numpy(), [e.numpy() for e in experts], out,
                                   offset=0)
    clean = [torch.randn(n).numpy() for _ in range(2)]
    assert kernels.merge_slice(plan, torch.randn(n).numpy(), clean, out, offset=0)


def test_a_finite_sum_that_rounds_to_bf16_infinity_fails_the_slice():
    big = torch.full((100,), 3.38e38)  # bf16's largest finite value is about 3.39e38
    experts = [big + 2e36, big + 2e36]  # 3.40e38: finite in float32, Inf once cast to bf16
    plan = kernels.Combine.linear([1.0, 1.0], normalize=True)
    args = (big.numpy(), [e.numpy() for e in experts])
    assert kernels.merge_slice(plan, *args, np.empty(100, np.float32), offset=0)
    out = np.empty(100, np.uint16)
    assert not kernels.merge_slice(plan, *args, out, offset=0)


@pytest.mark.parametrize("n", [7, 2048, 5000, 2 * 2048 + 13])
def test_band_scan_counts_above_and_gathers_each_band_in_order(n):
    g = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=g)
    # Many equal magnitudes, and experts of different spreads, each with its own bracket.
    experts = [base + s * torch.randint(-4, 5, (n,), generator=g) for s in (0.25, 0.5, 0.125)]
    bits = [magnitude_bits(e.to(torch.bfloat16).float() - base.to(torch.bfloat16).float())
            for e in experts]
    values = [sorted(set(b.tolist())) for b in bits]
    for pick in [(1, -2), (0, -1), (2, 2)]:
        low = [v[pick[0]] for v in values]
        high = [v[pick[1]] for v in values]
        scanned = kernels.band_scan(_bf16(base), [_bf16(e) for e in experts], low, high)
        for b, lo, hi, (above, band) in zip(bits, low, high, scanned):
            assert above == int((b > hi).sum())
            assert band.tolist() == b[(b >= lo) & (b <= hi)].tolist()


def test_strided_magnitudes_match_the_torch_task_vector():
    g = torch.Generator().manual_seed(0)
    base, expert = torch.randn(10_000, generator=g), torch.randn(10_000, generator=g)
    want = magnitude_bits(expert.to(torch.bfloat16).float() - base.to(torch.bfloat16).float())
    for part in (slice(0, 10_000, 7), slice(3, 9_000, 250), slice(0, 10_000)):
        got = kernels.magnitudes(_bf16(base), _bf16(expert), part)
        assert got.tolist() == want[part].tolist()


def test_radix_selection_matches_a_sort():
    g = np.random.default_rng(0)
    for trial in range(60):
        size = int(g.integers(1, 20_000))
        values = np.abs(g.standard_normal(size).astype(np.float32) * [1e-3, 1.0, 1e30][trial % 3])
        values = values.view(np.int32)
        if trial % 4 == 0:  # few distinct values, as bf16 task vectors near a cut
            values = (values // 4099) * 4099
        if trial % 5 == 0:  # any int32, negative ones too
            values = g.integers(-2**31, 2**31, size).astype(np.int32)
        ranks = sorted({1, size, *g.integers(1, size + 1, 3).tolist()})
        want = [int(v) for v in np.sort(values)[np.asarray(ranks) - 1]]
        assert kernels.kth_smallest(values, ranks) == want
        assert kernels.kth_smallest(values, ranks, int(values.min()), int(values.max())) == want


def test_kernels_compile_once_into_the_cache_and_survive_a_damaged_entry(tmp_path):
    """A kernel is compiled once and its object code cached; a later process loads it; a
    damaged cache entry is compiled again, not loaded (LLVM would crash on it)."""
    script = ("import numpy as np, torch; from mergezoo.merge.accel import kernels; "
              "plan = kernels.Combine.linear([1.0, 2.0]); a = np.ones(37, np.float32); "
              "out = np.empty(37, np.float32); "
              "assert kernels.merge_slice(plan, a, [a, 2 * a], out, offset=0); "
              "print(out[0], out[36])")
    env = {**os.environ, "MERGEZOO_KERNEL_CACHE": str(tmp_path)}

    def run() -> str:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run() == ["3.0", "3.0"]  # base 1, task vectors 0 and 1: 1 + 1 * 0 + 2 * 1
    cached = sorted(tmp_path.glob("mz_merge2_*.o"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert run() == ["3.0", "3.0"]
    assert cached[0].stat().st_mtime_ns == stamp  # loaded, not compiled again
    cached[0].write_bytes(cached[0].read_bytes()[:100] + b"damaged")
    assert run() == ["3.0", "3.0"]
    assert cached[0].read_bytes()[-7:] != b"damaged"
