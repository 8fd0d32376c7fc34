"""Machine code for the fused merge kernels: LLVM IR compiled once, cached on disk, loaded in
milliseconds.

`kernel_code` writes each kernel as LLVM IR text, specialized to what a merge needs (the
number of experts, the dtypes, the method's steps). llvmlite, LLVM's Python binding,
compiles it for this CPU at -O3 the first time; the object code is cached on disk under
`cache_dir()` (keyed by the kernel's name, the generator's source and the CPU), so later
processes load it in about a millisecond, with no compiler stack to import (llvmlite itself
imports in about 30 ms). Object code is loaded only from a folder owned by the current user
and writable by no one else, checked up to the root (`unsafe_reason`): without one, kernels are
compiled in memory and nothing is cached. Kernels are called through ctypes, which releases the GIL, so the
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
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable

from mergezoo.errors import ConfigurationError

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_machine_lock = threading.Lock()
_functions: dict[str, Callable] = {}


CACHE_ENV = "MERGEZOO_KERNEL_CACHE"


def cache_dir() -> Path | None:
    """Where compiled kernels are kept: `MERGEZOO_KERNEL_CACHE`, else
    `$XDG_CACHE_HOME/mergezoo/kernels` (`~/.cache/mergezoo/kernels`); None without a home
    directory (some containers): kernels are then compiled in memory and nothing is cached.

    There is no fallback to the shared temporary directory: another user could create the
    folder there first and plant object code that this process would then run."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME")
    if not root:
        try:
            root = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory
            return None
    return Path(root) / "mergezoo" / "kernels"


def unsafe_reason(path: Path, uid: int | None = None) -> str | None:
    """Why object code in the folder `path` could have been planted by someone else, or None
    when it is safe to load: checked as ssh checks the folders of its keys. The folder must be
    owned by `uid` (default: the current user) and writable by no one else; every folder above
    it must be owned by `uid` or root and writable by no one else, unless its sticky bit is set
    (like /tmp: others cannot then rename or remove what is not theirs). Symbolic links are
    resolved first, and the real folders checked."""
    uid = os.getuid() if uid is None else uid
    try:
        real = Path(os.path.realpath(path))
        st = os.stat(real)
    except OSError as err:
        return f"{path}: {err.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path}: not a folder"
    if st.st_uid != uid:
        return f"{real} is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & 0o022:
        return f"{real} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):o})"
    for parent in real.parents:
        st = os.stat(parent)
        if st.st_uid not in (uid, 0):
            return f"{parent}, above it, is owned by uid {st.st_uid}, neither you nor root"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return (f"{parent}, above it, is writable by its group or by others (mode "
                    f"{stat.S_IMODE(st.st_mode):o}) without the sticky bit")
    return None


def private_dir(uid: int | None = None) -> Path | None:
    """The kernel cache folder, created 0700 when missing, or None when there is no safe one
    (kernels are then compiled in memory). `MERGEZOO_KERNEL_CACHE` naming an unsafe folder is
    an error (the user asked for it); an unsafe default folder is only logged."""
    path = cache_dir()
    if path is None:
        return None
    explicit = bool(os.environ.get(CACHE_ENV))
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        if explicit:
            raise ConfigurationError(f"{CACHE_ENV}={path}: cannot create it ({err.strerror})"
                                     ) from None
        logger.info("no kernel cache (%s); compiling in memory", err)
        return None
    reason = unsafe_reason(path, uid)
    if reason is None:
        return path
    if explicit:
        raise ConfigurationError(
            f"{CACHE_ENV}={path} is not a private folder: {reason}. Object code loaded from "
            "there could have been planted by another user; point it at a folder only you can "
            "write (e.g. mkdir -m 700), or unset it.")
    logger.warning("not using the kernel cache %s (%s); compiling in memory", path, reason)
    return None


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
    """Write atomically, readable by the owner only; a cache that cannot be written
    (read-only home) is only slower."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")  # 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        logger.info("cannot cache kernel %s: %s", path.name, err)


def _read(path: Path, uid: int | None = None) -> bytes | None:
    """A cached object file, or None when missing, damaged, or not safely ours: LLVM crashes
    on a bad one, so each is stored after its sha256 and checked (which catches corruption,
    not tampering: tampering is kept out by the folder's and the file's owner and mode)."""
    uid = os.getuid() if uid is None else uid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
            logger.warning("ignoring the cached kernel %s: not a private file of yours", path)
            return None
        data = f.read()
    digest, obj = data[:32], data[32:]
    return obj if obj and hashlib.sha256(obj).digest() == digest else None


def cache_name(name: str, source_key: str = "") -> str:
    """The file name kernel `name` is cached under (keyed by LLVM, the CPU and `source_key`)."""
    identity = _machine()[3]
    return f"{name}-{hashlib.sha256(f'{identity}|{source_key}|{name}'.encode()).hexdigest()[:24]}.o"


def function(name: str, ir: Callable[[], str], restype, argtypes: list, *,
             source_key: str = "") -> Callable:
    """The kernel `name` (a function of that name in the IR that `ir()` returns) as a ctypes
    function, compiled or loaded from the cache once per process. `source_key` must change
    whenever the IR `ir()` returns for this name may change (e.g. a hash of its generator)."""
    with _lock:
        if name in _functions:
            return _functions[name]
        ll, _, engine, _ = _machine()
        folder = private_dir()
        path = folder / cache_name(name, source_key) if folder is not None else None
        obj = _read(path) if path is not None else None
        if obj is None:
            obj = _compile(name, ir())
            if path is not None:
                _store(path, hashlib.sha256(obj).digest() + obj)
        engine.add_object_file(ll.ObjectFileRef.from_data(obj))
        address = engine.get_function_address(name)
        if not address:
            raise RuntimeError(f"kernel {name}: not found in its object code ({path or 'memory'})")
        fn = ctypes.CFUNCTYPE(restype, *argtypes)(address)
        _functions[name] = fn
        return fn
