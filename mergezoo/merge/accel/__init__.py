"""The CPU accelerator of the merge engine: fused kernels, slice-by-slice merging, statistics.

Nothing here defines a method's maths: that is `mergezoo.merge.ops` and the methods in
`mergezoo.merge.methods`, in torch. The accelerator runs the same maths faster on CPU and is
checked byte for byte against them (tests/merge/test_slicing.py):

- `slicing`: merges an element-wise method's tensor one cache-sized slice at a time, on
  several threads, from the inputs' own dtype; computes the per-tensor statistics a method
  declares (top-k selections, Gram matrices) in a first pass over the slices.
- `plans`: compiles a task-vector family configuration (`methods.family.FamilyConfig`) and
  its statistics into a fused kernel's plan (`kernels.Combine`): never a method by name.
- `kernels`: the fused kernels' Python side (plans, calls, top-k scans, selection);
  `kernel_code` writes them as LLVM IR with the helpers of `ir`; `jit` compiles and caches.
- `global_trim`: the whole-model magnitude thresholds (TIES with `trim_scope: model`).
- `threads`: torch's intra-op thread count, scoped (the engine merges slices on its own
  threads, one torch thread each).

Example:
    >>> from mergezoo.merge.accel import kernels
    >>> kernels.Combine.linear([1.0, 1.0]).sign
    0
"""
