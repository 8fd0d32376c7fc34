"""`TensorSource`: what the engine needs of one input model, read tensor by tensor.

Its own module, with no import of any source implementation, so that every kind of source
(safetensors and pickle files in `sources`, LoRA adapters in `lora`, in-memory state dicts)
can name the protocol without importing the others.

Example:
    >>> class Ones:
    ...     label = "ones"
    ...     def keys(self): return ["w"]
    ...     def shape(self, key): return (2,)
    ...     def dtype(self, key): return torch.float32
    ...     def get(self, key): return torch.ones(2)
    >>> isinstance(Ones(), TensorSource)
    True
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TensorSource(Protocol):
    """One input model, read tensor by tensor."""

    label: str  # how errors name this input, e.g. "expert 'org/a'"

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def dtype(self, key: str) -> torch.dtype: ...

    def get(self, key: str) -> torch.Tensor: ...
