"""The benchmark registry: built-in benchmarks by name, and YAML definitions by path.

Register a benchmark class (constructed as `cls(size=...)`) with the decorator, then get it:

    >>> from mergezoo.eval.registry import get_benchmark, list_benchmarks
    >>> "digits-domains" in list_benchmarks()
    True
    >>> get_benchmark("digits-domains", size="tiny").size
    'tiny'

    @register_benchmark("my-bench")
    class MyBench(Benchmark): ...

Built-in modules are imported on first use (BUILTIN_MODULES maps names to modules; a module
that is not written yet is skipped; `get_benchmark(name)` imports only that benchmark's module). A name that ends in .yaml/.yml, or names a file, is loaded as a YAML
definition (`mergezoo.eval.hub_benchmark.HubBenchmark`); so is the name of a definition shipped
in `mergezoo/eval/definitions/`.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from mergezoo.errors import BenchmarkDefinitionError, UnknownBenchmarkError
from mergezoo.eval.spec import SIZES

if TYPE_CHECKING:
    from mergezoo.eval.benchmark import Benchmark

log = logging.getLogger(__name__)

# name -> module; `get_benchmark(name)` imports only that module, `list_benchmarks()` all.
BUILTIN_MODULES = {
    "digits-domains": "mergezoo.eval.benchmarks.digits_domains",
    "text-styles": "mergezoo.eval.benchmarks.text_styles",
    "digits-diffusion": "mergezoo.eval.benchmarks.digits_diffusion",
}
DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"

_REGISTRY: dict[str, type] = {}
_loaded = False
T = TypeVar("T")


def register_benchmark(name: str) -> Callable[[T], T]:
    """Class decorator: register a Benchmark subclass under `name` (constructed with `size=`)."""
    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise BenchmarkDefinitionError(f"benchmark {name!r} is registered twice "
                                           f"({_REGISTRY[name].__module__} and {cls.__module__})")
        _REGISTRY[name] = cls
        cls.registered_name = name  # type: ignore[attr-defined]
        return cls
    return deco


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        log.debug("built-in benchmark module %s is not there yet", module)


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for module in BUILTIN_MODULES.values():
        _import(module)
    _loaded = True


def list_benchmarks() -> list[str]:
    """Names of the registered (built-in) benchmarks, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def shipped_definitions() -> dict[str, Path]:
    """YAML benchmark definitions shipped with the package: {name: path}."""
    return {p.stem: p for p in sorted(DEFINITIONS_DIR.glob("*.yaml"))}


def get_benchmark(name: str, size: str = "default") -> Benchmark:
    """A registered benchmark at `size`, or a YAML definition (path or shipped name)."""
    if size not in SIZES:
        raise BenchmarkDefinitionError(f"size {size!r} is not one of {SIZES}")
    if name in BUILTIN_MODULES:
        _import(BUILTIN_MODULES[name])
    else:
        _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name](size=size)
    path = Path(name).expanduser()
    shipped = shipped_definitions()
    if name.endswith((".yaml", ".yml")) or path.is_file() or name in shipped:
        from mergezoo.eval.hub_benchmark import HubBenchmark

        return HubBenchmark.from_yaml(shipped.get(name, path))
    raise UnknownBenchmarkError(
        f"unknown benchmark {name!r}; built-in: {', '.join(sorted(_REGISTRY)) or 'none'}; "
        f"shipped definitions: {', '.join(shipped) or 'none'}; or give a path to a YAML file")
