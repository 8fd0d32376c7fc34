"""Writing merged weights: streamed safetensors shards, and atomic output folders.

`ShardedSafetensorsWriter` knows every tensor's name, shape and dtype before the first byte is
written (the engine reads them from the input headers), so it writes each shard's header first
and then streams tensor bytes straight to disk: peak memory is one tensor, not one shard. The
files are ordinary safetensors, read back by `safetensors.safe_open` and `from_pretrained`.

Example:
    >>> plan = {"w": ((2, 2), torch.float32)}
    >>> with atomic_output_dir("out", overwrite=True) as tmp:          # doctest: +SKIP
    ...     with ShardedSafetensorsWriter(tmp, "model", plan) as writer:
    ...         writer.write("w", torch.zeros(2, 2))
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mergezoo.merge.atomic import atomic_output_dir  # noqa: F401  (re-exported)
from mergezoo.merge.sources import SAFETENSORS_DTYPES

_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def parse_size(text: str | int) -> int:
    """'2GB' -> 2_000_000_000 bytes (decimal units, like transformers' max_shard_size)."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


HASH_BESIDE = 1 << 20  # bytes from which a tensor is hashed on its own thread


class ShardedSafetensorsWriter:
    """Streams tensors, in the order of `plan`, into `<stem>.safetensors` or
    `<stem>-0000i-of-0000n.safetensors` shards plus `<stem>.safetensors.index.json`."""

    def __init__(self, folder: Path, stem: str, plan: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 max_shard_size: str | int = "2GB", metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.stem = stem
        self.plan = plan
        self.metadata = {"format": "pt", **(metadata or {})}
        limit = parse_size(max_shard_size)
        shards: list[list[str]] = [[]]
        size = 0
        for key, (shape, dtype) in plan.items():
            b = nbytes(shape, dtype)
            if shards[-1] and size + b > limit:
                shards.append([])
                size = 0
            shards[-1].append(key)
            size += b
        self.shards = shards
        n = len(shards)
        self.names = ([f"{stem}.safetensors"] if n == 1 else
                      [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self._shard_of = {key: i for i, keys in enumerate(shards) for key in keys}
        self._order = [key for keys in shards for key in keys]
        self._next = 0
        self._file = None
        self._current = -1
        self._hash = None
        self.sha256: dict[str, str] = {}  # file name -> hex digest, computed while writing
        # Hashing runs beside the write (both release the GIL): a 400 MB model's SHA-256 took
        # as long as writing it, and the writer is on the merge's critical path.
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergezoo-hash")

    def __enter__(self) -> "ShardedSafetensorsWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._file:
            self._file.close()
            self._file = None
        self._hasher.shutdown(wait=True)

    def _close_shard(self) -> None:
        if self._file:
            self._file.close()
            self.sha256[self.names[self._current]] = self._hash.hexdigest()
            self._file = None

    def _emit(self, data) -> None:
        if len(data) < HASH_BESIDE:
            self._file.write(data)
            self._hash.update(data)
            return
        hashed = self._hasher.submit(self._hash.update, data)
        try:
            self._file.write(data)
        finally:
            hashed.result()  # in order: the next update waits for this one

    def _open_shard(self, index: int) -> None:
        self._close_shard()
        header: dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        for key in self.shards[index]:
            shape, dtype = self.plan[key]
            b = nbytes(shape, dtype)
            header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape),
                           "data_offsets": [offset, offset + b]}
            offset += b
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
        self._file = open(self.folder / self.names[index], "wb")
        self._hash = hashlib.sha256()
        self._current = index
        self._emit(struct.pack("<Q", len(raw)))
        self._emit(raw)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; tensors must come in the plan's order, with its shape and dtype."""
        expected = self._order[self._next]
        if key != expected:
            raise RuntimeError(f"writer expected tensor '{expected}', got '{key}'")
        shape, dtype = self.plan[key]
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise RuntimeError(f"{key}: expected {tuple(shape)} {dtype}, got "
                               f"{tuple(tensor.shape)} {tensor.dtype}")
        if self._shard_of[key] != self._current:
            self._open_shard(self._shard_of[key])
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._emit(memoryview(data.numpy()))
        self._next += 1

    def finish(self) -> list[str]:
        """Close the last shard, write the index (when sharded) and return the file names."""
        if self._next != len(self._order):
            raise RuntimeError(f"writer got {self._next} of {len(self._order)} tensors")
        if len(self.names) == 1 and not self._order:
            self._open_shard(0)
        self._close_shard()
        files = list(self.names)
        if len(self.names) > 1:
            total = sum(nbytes(*self.plan[k]) for k in self._order)
            index = {"metadata": {"total_size": total},
                     "weight_map": {k: self.names[self._shard_of[k]] for k in self._order}}
            name = f"{self.stem}.safetensors.index.json"
            (self.folder / name).write_text(json.dumps(index, indent=2) + "\n")
            files.append(name)
        return files
