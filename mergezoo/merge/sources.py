"""Lazily opened tensor sources: the engine's view of one input model.

A source knows its tensor names, shapes and dtypes from the file headers alone and reads a
tensor only when asked, so the engine can stream a merge tensor by tensor. Other kinds of
expert (LoRA adapters, diffusers LoRA files) plug in by implementing `TensorSource`.

Example:
    >>> src = open_source("path/to/model")            # doctest: +SKIP
    >>> src.shape("model.embed_tokens.weight")        # doctest: +SKIP
    (32000, 4096)
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from mergezoo.errors import BadCheckpointError, ModelNotFoundError, UnsafeCheckpointError
from mergezoo.merge.tensor_source import TensorSource
from mergezoo.zoo.manifest import PICKLE_SUFFIXES, weight_files_of
from mergezoo.zoo.paths import member
from mergezoo.zoo.safetensors_header import read_header

PICKLE_STEMS = {"pytorch_model": "model", "diffusion_pytorch_model": "diffusion_pytorch_model",
                "adapter_model": "adapter_model"}

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class SafetensorsSource:
    """Tensors of one or more safetensors files (a single file, or shards with an index)."""

    def __init__(self, files: list[Path], label: str, weights_stem: str = "model"):
        self.label = label
        self.files = files
        self.weights_stem = weights_stem
        self._where: dict[str, int] = {}
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        # Each header is checked (lengths, ranges, dtypes) before the file is mapped, and what
        # the file was then is kept: a file truncated later would kill the process with SIGBUS
        # when a mapped page past its new end is touched, so `get` looks first.
        self._stamps: list[tuple[int, int, int]] = []
        self._handles = []
        for i, f in enumerate(files):
            header = read_header(f, f"{label}: {f.name}")
            for key, (shape, dtype) in header.tensors.items():
                if dtype not in SAFETENSORS_DTYPES:
                    raise BadCheckpointError(
                        f"{label}: {f.name}: tensor {key!r} has dtype {dtype}, which mergezoo "
                        f"cannot merge (it reads {', '.join(SAFETENSORS_DTYPES)})")
                if key in self._where:
                    raise BadCheckpointError(f"{label}: tensor {key!r} is in both "
                                             f"{files[self._where[key]].name} and {f.name}")
                self._where[key] = i
                self._meta[key] = (shape, SAFETENSORS_DTYPES[dtype])
            st = os.stat(f)
            if st.st_size != header.file_size:
                raise BadCheckpointError(f"{label}: {f.name}: {st.st_size} bytes, but its header "
                                         f"describes {header.file_size}")
            self._stamps.append((header.file_size, st.st_mtime_ns, st.st_ino))
            try:
                self._handles.append(safe_open(str(f), framework="pt", device="cpu"))
            except SafetensorError as err:  # a header the checks above let through
                raise BadCheckpointError(f"{label}: {f.name}: {err}") from None

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._meta[key][1]

    def check_unchanged(self, index: int) -> None:
        """Raise `BadCheckpointError` when file `index` was changed since it was opened (an
        in-place re-save): reading its mapping could then crash the process."""
        f = self.files[index]
        try:
            st = os.stat(f)
            now = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            now = None
        if now != self._stamps[index]:
            size = f"{now[0]} bytes" if now else "gone"
            raise BadCheckpointError(
                f"{self.label}: {f} changed while the merge was reading it (now {size}, was "
                f"{self._stamps[index][0]}); nothing was written. Merge again once it is saved.")

    def get(self, key: str) -> torch.Tensor:
        index = self._where[key]
        self.check_unchanged(index)
        return self._handles[index].get_tensor(key)


class StateDictSource:
    """Tensors already in memory (a pickle checkpoint loaded with `weights_only=True`)."""

    def __init__(self, tensors: dict[str, torch.Tensor], label: str, weights_stem: str = "model"):
        self.label = label
        self.weights_stem = weights_stem
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key].clone()  # the engine may work in place on what it gets


# How torch.load words an archive it cannot read (a truncated or foreign file).
_UNREADABLE_ARCHIVE = ("PytorchStreamReader", "zip archive", "mmap can only be used",
                       "Invalid magic number", "invalid load key")


def _unreadable_archive(err: RuntimeError) -> bool:
    return not isinstance(err, torch.OutOfMemoryError) and any(
        text in str(err) for text in _UNREADABLE_ARCHIVE)


def find_weight_files(folder: Path) -> tuple[str, list[Path], bool]:
    """Return (stem, files, is_pickle) for the weights in `folder`, preferring safetensors (and
    an index over a single file), by the same rule the zoo validates Hub repos with."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    safetensors, pickles, index = weight_files_of(names)
    if index is not None:
        weight_map = _weight_map(folder / index)
        # Each file an index names must lie in the folder: "/root/.cache/huggingface/token" or
        # "../x" would make the merge read a file that is not part of the model.
        first_key = {}
        for key, name in weight_map.items():
            first_key.setdefault(name if isinstance(name, str) else repr(name), (key, name))
        files = [folder / member(name, f"{folder / index}: weight_map[{key!r}]", root=folder)
                 for key, name in first_key.values()]
        return index.removesuffix(".safetensors.index.json"), files, False
    if safetensors:
        stem = safetensors[0].split("-0")[0].removesuffix(".safetensors")
        return stem, [folder / name for name in safetensors], False
    if pickles:
        stem = pickles[0].split("-0")[0].rsplit(".", 1)[0]
        # transformers' pytorch_model.bin becomes model.safetensors; diffusers keeps its stem.
        return PICKLE_STEMS.get(stem, stem), [folder / name for name in pickles], True
    raise ModelNotFoundError(f"no weights (*.safetensors, or *.bin/*.pt) in {folder}")


def _weight_map(path: Path) -> dict[str, str]:
    """The `weight_map` of a safetensors index file, or `BadCheckpointError` naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadCheckpointError(f"{path}: not a readable index file ({err})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise BadCheckpointError(f"{path}: no 'weight_map' object in the index file")
    return weight_map


def is_lora_folder(path: Path) -> bool:
    """A PEFT adapter folder, or a folder holding a diffusers LoRA file."""
    return path.is_dir() and ((path / "adapter_config.json").is_file()
                              or (path / "pytorch_lora_weights.safetensors").is_file())


def open_source(path: str | Path, label: str | None = None, *, allow_pickle: bool = False,
                base_source: TensorSource | None = None, component: str | None = None):
    """Open the weights of a local model folder (or a single weights file) lazily.

    A PEFT adapter folder (adapter_config.json) opens as the base plus the adapter's full
    delta, which needs `base_source`. Pickle checkpoints (.bin/.pt) are refused unless
    `allow_pickle`; they are then loaded with `torch.load(weights_only=True)`, which cannot run
    arbitrary code.
    """
    path = Path(path).expanduser()
    label = label or str(path)
    if not path.exists():
        raise ModelNotFoundError(f"{label}: no such file or folder: {path}")
    if is_lora_folder(path):
        if base_source is None:
            raise ModelNotFoundError(f"{label}: is a LoRA adapter; merging it needs its base model")
        # LoRA support lives in its own module, which imports none of this one.
        from mergezoo.merge.lora import open_lora_source

        return open_lora_source(path, label, base_source, component=component)
    if path.is_file():
        stem = path.name.split("-0")[0].split(".")[0]
        stem = PICKLE_STEMS.get(stem, stem)
        files, is_pickle = [path], path.suffix in PICKLE_SUFFIXES
    else:
        stem, files, is_pickle = find_weight_files(path)
    if not is_pickle:
        return SafetensorsSource(files, label, stem)
    if not allow_pickle:
        names = ", ".join(f.name for f in files)
        raise UnsafeCheckpointError(
            f"{label}: only pickle checkpoints found ({names}); pickle files can run code when "
            "loaded. Convert them to safetensors, or pass --allow-pickle to load them with "
            "torch.load(weights_only=True)."
        )
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            loaded = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:  # weights_only refused what the pickle asks for
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            reason = next((ln for ln in lines if "unsupported" in ln.lower()),
                          lines[0] if lines else type(err).__name__)
            raise UnsafeCheckpointError(
                f"{label}: {f.name}: torch.load(weights_only=True) refused it: the pickle asks "
                f"for more than tensors ({reason}); it was not loaded") from None
        except (RuntimeError, EOFError, OSError) as err:
            # torch reports an unreadable archive as a RuntimeError; any other RuntimeError
            # (out of memory, a bug) is not the file's fault and keeps its traceback.
            if isinstance(err, RuntimeError) and not _unreadable_archive(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BadCheckpointError(f"{label}: {f.name}: not a readable checkpoint ({first})"
                                     ) from None
        if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in loaded.items()):
            raise BadCheckpointError(f"{label}: {f.name}: not a state dict of named tensors")
        tensors.update(loaded)
    return StateDictSource(tensors, label, stem)
