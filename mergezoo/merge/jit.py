"""Machine code for the fused merge kernels: LLVM IR compiled once, cached on disk, loaded in
milliseconds.

`kernel_code` writes each kernel as LLVM IR text, specialized to what a merge needs (the
number of experts, the dtypes, the method's steps). llvmlite, LLVM's Python binding,
compiles it for this CPU at -O3 the first time; the object code is cached on disk under
`cache_dir()` (keyed by the kernel's name, the generator's source and the CPU), so later
processes load it in about a millisecond, with no compiler stack to import (llvmlite itself
imports in about 30 ms). Kernels are called through ctypes, which releases the GIL, so the
engine's compute threads run them side by side.

Example:
    >>> import ctypes
    >>> ir = ("define i64 @mz_twice(i64 %x) {\\n  %y = shl i64 %x, 1\\n  ret i64 %y\\n}\\n")
    >>> twice = function("mz_twice", lambda: ir, ctypes.c_int64, [ctypes.c_int64])
    >>> twice(21)
    42
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_machine_lock = threading.Lock()
_functions: dict[str, Callable] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept: `MERGEZOO_KERNEL_CACHE`, else
    `$XDG_CACHE_HOME/mergezoo/kernels` (`~/.cache/mergezoo/kernels`)."""
    if os.environ.get("MERGEZOO_KERNEL_CACHE"):
        return Path(os.environ["MERGEZOO_KERNEL_CACHE"])
    try:
        root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home directory (some containers)
        root = Path(tempfile.gettempdir())
    return Path(root) / "mergezoo" / "kernels"


def _machine():
    """llvmlite, a target machine for this CPU and the JIT engine the kernels live in: one per
    process (made under a lock: a second engine would free the first one's code)."""
    with _machine_lock:
        return _make_machine()


@functools.cache
def _make_machine():
    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    target = ll.Target.from_default_triple()
    cpu, features = ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten()
    machine = target.create_target_machine(cpu=cpu, features=features, opt=3, jit=True)
    engine = ll.create_mcjit_compiler(ll.parse_assembly(""), machine)
    identity = f"{ll.llvm_version_info}|{target.triple}|{cpu}|{features}"
    return ll, machine, engine, identity


def _compile(name: str, ir: str) -> bytes:
    ll, machine, _, _ = _machine()
    module = ll.parse_assembly(ir)
    module.triple = machine.triple
    module.data_layout = str(machine.target_data)
    module.verify()
    builder = ll.create_pass_builder(machine, ll.create_pipeline_tuning_options(speed_level=3))
    builder.getModulePassManager().run(module, builder)
    return machine.emit_object(module)


def _store(path: Path, data: bytes) -> None:
    """Write atomically; a cache that cannot be written (read-only home) is only slower."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        logger.info("cannot cache kernel %s: %s", path.name, err)


def _read(path: Path) -> bytes | None:
    """A cached object file, or None when missing or damaged: LLVM crashes on a bad one, so
    each is stored after its sha256 and checked."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest, obj = data[:32], data[32:]
    return obj if obj and hashlib.sha256(obj).digest() == digest else None


def function(name: str, ir: Callable[[], str], restype, argtypes: list, *,
             source_key: str = "") -> Callable:
    """The kernel `name` (a function of that name in the IR that `ir()` returns) as a ctypes
    function, compiled or loaded from the cache once per process. `source_key` must change
    whenever the IR `ir()` returns for this name may change (e.g. a hash of its generator)."""
    with _lock:
        if name in _functions:
            return _functions[name]
        ll, _, engine, identity = _machine()
        key = hashlib.sha256(f"{identity}|{source_key}|{name}".encode()).hexdigest()[:24]
        path = cache_dir() / f"{name}-{key}.o"
        obj = _read(path)
        if obj is None:
            obj = _compile(name, ir())
            _store(path, hashlib.sha256(obj).digest() + obj)
        engine.add_object_file(ll.ObjectFileRef.from_data(obj))
        address = engine.get_function_address(name)
        if not address:
            raise RuntimeError(f"kernel {name}: not found in its object code ({path})")
        fn = ctypes.CFUNCTYPE(restype, *argtypes)(address)
        _functions[name] = fn
        return fn
