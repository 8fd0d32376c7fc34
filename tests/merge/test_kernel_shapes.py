"""The kernels never read past an array (issue 13, item 13): every wrapper checks lengths,
dtypes and layout before its call, and the engine checks that each tensor a source gives
has the shape and dtype it declared, so a short source is a named error, not a segfault."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from merge_helpers import assert_nothing_written
from mergezoo.errors import BadCheckpointError
from mergezoo.merge.engine import merge_sources
from mergezoo.merge.sources import StateDictSource

pytest.importorskip("llvmlite")
from mergezoo.merge.accel import kernels  # noqa: E402

N = 1000


def _ones(n=N, dtype=np.float32):
    return np.ones(n, dtype)


@pytest.mark.parametrize("bad", [_ones(N - 1), _ones(N, np.float16), _ones(2 * N)[::2],
                                 _ones(N).reshape(10, 100), _ones(N, np.float64)])
def test_merge_slice_refuses_an_array_it_would_read_past(bad):
    plan = kernels.Combine.linear([1.0, 1.0])
    with pytest.raises(ValueError, match="merge_slice: expected contiguous 1-D arrays of 1000"):
        kernels.merge_slice(plan, _ones(), [_ones(), bad], _ones(), offset=0)
    with pytest.raises(ValueError, match="merge_slice"):  # as the output too
        kernels.merge_slice(plan, _ones(), [_ones(), _ones()], bad, offset=0)


def test_merge_slice_refuses_a_plan_for_another_number_of_experts():
    with pytest.raises(ValueError, match="a plan for 3 experts, given 2"):
        kernels.merge_slice(kernels.Combine.linear([1.0] * 3), _ones(), [_ones(), _ones()],
                            _ones(), offset=0)


def test_the_other_kernels_check_their_arrays():
    short = _ones(N - 16)
    with pytest.raises(ValueError, match="band_scan"):
        kernels.band_scan(_ones(), [_ones(), short], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="band_scan"):
        kernels.band_scan(_ones(), [_ones()], [0, 0], [1, 1])  # a bracket per expert
    with pytest.raises(ValueError, match="magnitudes"):
        kernels.magnitudes(_ones(), short, slice(0, N))
    with pytest.raises(ValueError, match="tied_counts"):
        kernels._after_tie(_ones(), short, 0, 1)
    with pytest.raises(ValueError, match="5 tied entries asked for, 0 found"):
        kernels._after_tie(_ones(), _ones(), 7, 5)
    assert kernels.magnitudes(_ones(), _ones(), slice(0, N, 100)).tolist() == [0] * 10


class ShortSource(StateDictSource):
    """Declares (64, 64) for 'w' but gives fewer entries (a lying or broken source)."""

    def shape(self, key):
        return (64, 64)

    def get(self, key):
        return torch.ones(16, 16)


@pytest.mark.parametrize("method", ["average", "ties"])
def test_a_source_shorter_than_its_shape_is_a_named_error(tmp_path, monkeypatch, method):
    monkeypatch.setenv("MERGEZOO_KERNELS", "fused")
    base = StateDictSource({"w": torch.zeros(64, 64)}, "base")
    good = StateDictSource({"w": torch.ones(64, 64)}, "expert 'good'")
    short = ShortSource({"w": torch.ones(64, 64)}, "expert 'short'")
    out = tmp_path / "out"
    with pytest.raises(BadCheckpointError, match=r"expert 'short': tensor 'w' holds \(16, 16\) "
                       r"torch.float32, but its header declares \(64, 64\)"):
        merge_sources(method, [good, short], base=base, out_dir=out, progress=False)
    assert_nothing_written(out)
