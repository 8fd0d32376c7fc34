"""Read and check a safetensors file's header before anything maps the file.

safetensors' own parser rejects most malformed headers, but with an exception that names no
file; some (a header length of 2**63, a JSON list, an unknown dtype, duplicate names) reach
mergezoo's code as OverflowError, MemoryError or KeyError. `read_header` checks everything a
reader relies on (the length against the file's size, the JSON, each tensor's dtype, shape and
byte range, that ranges neither overlap nor leave a gap, string metadata) and raises
`BadCheckpointError` naming the file and the field. It also gives the size the file must have,
which the engine checks again before each read (a file truncated while being read).

Example:
    >>> header = read_header(Path("model.safetensors"))            # doctest: +SKIP
    >>> header.tensors["w"], header.file_size                      # doctest: +SKIP
    (((4, 4), 'F32'), 136)
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from mergezoo.errors import BadCheckpointError

# Bytes per element of every dtype the safetensors format defines (sub-byte ones as fractions).
DTYPE_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16,
              "I8": 8, "U64": 64, "U32": 32, "U16": 16, "U8": 8, "BOOL": 8, "F8_E4M3": 8,
              "F8_E5M2": 8, "F8_E8M0": 8, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4, "C64": 64}
MAX_HEADER = 100_000_000  # safetensors' own limit on the header's length


@dataclass(frozen=True)
class Header:
    """A checked header: tensors as (shape, dtype name), and the file's size it implies."""

    tensors: dict[str, tuple[tuple[int, ...], str]]
    metadata: dict[str, str]
    file_size: int  # 8 + header length + data length


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise BadCheckpointError(f"the name {dup!r} appears twice")
    return dict(pairs)


def read_header(path: Path, label: str | None = None) -> Header:
    """The checked header of the safetensors file `path` (messages name it as `label`)."""
    label = label or str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise BadCheckpointError(f"{label}: not a safetensors file ({size} bytes, "
                                         "shorter than the 8-byte header length)")
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(size - 8, MAX_HEADER):
                raise BadCheckpointError(
                    f"{label}: header length {length} is larger than the file ({size} bytes) "
                    f"or the safetensors limit ({MAX_HEADER}); the file is truncated or not "
                    "safetensors")
            raw = f.read(length)
    except OSError as err:
        raise BadCheckpointError(f"{label}: cannot read it ({err.strerror or err})") from None
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicates)
    except BadCheckpointError as err:
        raise BadCheckpointError(f"{label}: header: {err}") from None
    except (ValueError, RecursionError) as err:
        raise BadCheckpointError(f"{label}: the header is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadCheckpointError(f"{label}: the header is a JSON {type(data).__name__}, not an "
                                 "object of tensors")
    return _check(data, label, size - 8 - length, 8 + length)


def _check(data: dict, label: str, data_size: int, start: int) -> Header:
    metadata = data.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise BadCheckpointError(f"{label}: __metadata__ must map strings to strings")
    tensors, ranges = {}, []
    for name, meta in data.items():
        where = f"{label}: tensor {name!r}"
        if not isinstance(meta, dict):
            raise BadCheckpointError(f"{where}: not an object")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise BadCheckpointError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise BadCheckpointError(f"{where}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
            raise BadCheckpointError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or offsets[1] - offsets[0] != bits // 8:
            raise BadCheckpointError(f"{where}: {dtype} {shape} needs {bits / 8:g} bytes, but "
                                     f"data_offsets {offsets} hold {offsets[1] - offsets[0]}")
        if offsets[1] > data_size:
            raise BadCheckpointError(f"{where}: data_offsets {offsets} run past the end of the "
                                     f"file's {data_size} data bytes (truncated?)")
        tensors[name] = (tuple(shape), dtype)
        ranges.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(ranges):
        if begin < end:
            raise BadCheckpointError(f"{label}: tensor {name!r} overlaps the tensor before it "
                                     f"(data_offsets start at {begin}, before {end})")
        if begin > end:
            raise BadCheckpointError(f"{label}: a gap in the data before tensor {name!r}")
        end = stop
    if end != data_size:
        raise BadCheckpointError(f"{label}: the tensors cover {end} of the file's {data_size} "
                                 "data bytes")
    return Header(tensors, metadata, start + data_size)
