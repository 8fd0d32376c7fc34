"""Build a benchmark's toy zoo once and cache it; open a built zoo.

The cache folder is `$MERGEZOO_CACHE/zoos` (default `~/.cache/mergezoo/zoos`, or
`$XDG_CACHE_HOME/mergezoo/zoos`); each zoo is `<name>-<size>-<first 12 hex of the definition
hash>`, so changing a definition (or its `version`) builds a new zoo, and an unchanged one is
reused. A build writes into a temporary sibling folder and renames it into place at the end,
so an interrupted build never leaves a half-written zoo behind.

Example:
    >>> from mergezoo.eval import get_benchmark                # doctest: +SKIP
    >>> zoo = build_zoo(get_benchmark("digits-domains", size="tiny"))     # doctest: +SKIP
    >>> zoo.model_path("expert", "group0-inverted", seed=1)               # doctest: +SKIP
    PosixPath('~/.cache/mergezoo/zoos/digits-domains-tiny-3f2a.../digits-domains-expert-...')
    >>> zoo.dataset("group1-rotated", "test")                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergezoo.errors import BenchmarkError
from mergezoo.eval.zoo_writer import MANIFEST, ZooWriter, hash_tree

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from mergezoo.eval.benchmark import Benchmark

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """`$MERGEZOO_CACHE`, else `$XDG_CACHE_HOME/mergezoo`, else `~/.cache/mergezoo`."""
    if os.environ.get("MERGEZOO_CACHE"):
        return Path(os.environ["MERGEZOO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "mergezoo"


def default_zoo_dir(benchmark: Benchmark) -> Path:
    spec = benchmark.spec
    return cache_root() / "zoos" / f"{spec.name}-{spec.size or 'custom'}-{spec.definition_hash()[:12]}"


@dataclass(frozen=True)
class ZooModel:
    """One model repo folder of a local zoo, as listed in its manifest."""

    name: str
    path: Path
    role: str
    cell: str | None
    seed: int | None
    tags: tuple[str, ...]
    base_model: str | None = None


class BenchmarkZoo:
    """A built zoo folder: its models (by role, cell, seed), datasets and sanity numbers."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise BenchmarkError(f"{self.root}: not a built zoo (no {MANIFEST})")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())

    @property
    def benchmark(self) -> str:
        return self.manifest["benchmark"]

    @property
    def definition_hash(self) -> str:
        return self.manifest["definition_hash"]

    def models(self, role: str | None = None, cell: str | None = None,
               seed: int | None = None) -> list[ZooModel]:
        """The zoo's models, filtered by role / cell / seed."""
        out = []
        for m in self.manifest["models"]:
            if (role is None or m["role"] == role) and (cell is None or m["cell"] == cell) and (
                    seed is None or m["seed"] == seed):
                out.append(ZooModel(name=m["name"], path=self.root / m["name"], role=m["role"],
                                    cell=m["cell"], seed=m["seed"], tags=tuple(m["tags"]),
                                    base_model=m.get("base_model")))
        return out

    def model_path(self, role: str, cell: str | None = None, seed: int | None = None) -> Path:
        """The folder of the one model with this role, cell and seed (first seed if None)."""
        found = self.models(role, cell, seed)
        if not found:
            raise BenchmarkError(f"zoo {self.root.name} has no {role} model"
                                 + (f" for cell {cell!r}" if cell else "")
                                 + (f" with seed {seed}" if seed is not None else ""))
        return found[0].path

    def seeds(self, role: str = "expert") -> list[int]:
        return sorted({m.seed for m in self.models(role) if m.seed is not None})

    def dataset_dict(self, cell: str) -> DatasetDict:
        from datasets import load_from_disk

        path = self.root / self.manifest["datasets"]["path"] / cell
        if not path.is_dir():
            raise BenchmarkError(f"zoo {self.root.name} has no data for cell {cell!r}")
        return load_from_disk(str(path))

    def dataset(self, cell: str, split: str = "test") -> Dataset:
        return self.dataset_dict(cell)[split]

    @property
    def sanity(self) -> dict[str, Any] | None:
        path = self.root / "sanity.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def build_info(self) -> dict[str, Any]:
        path = self.root / "build.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def verify(self) -> list[str]:
        """Files whose sha256 no longer matches the manifest (or that appeared / vanished)."""
        now, then = hash_tree(self.root), self.manifest["files"]
        return sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))


def _versions() -> dict[str, str]:
    import datasets
    import torch
    import transformers

    from mergezoo import __version__
    return {"mergezoo": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "python": platform.python_version()}


def build_zoo(benchmark: Benchmark, out: str | Path | None = None, *, force: bool = False,
              sanity: bool = True, workers: int | None = None,
              progress: bool = False) -> BenchmarkZoo:
    """Build `benchmark`'s toy zoo into `out` (default: the cache folder) and return it.

    Reuses an existing zoo built from the same definition unless `force`. Refuses to overwrite
    a folder that is not a zoo of this definition unless `force`. Independent trainings and
    evaluations run in `workers` processes (default `training.default_workers()`: min(2,
    cores)); the files are the same for any number. `progress` shows a bar of the models
    saved so far (trainings may run in worker processes, so it watches the folder).
    """
    target = Path(out).expanduser() if out is not None else default_zoo_dir(benchmark)
    want = benchmark.spec.definition_hash()
    if target.exists() and not force:
        try:
            existing = BenchmarkZoo(target)
        except BenchmarkError:
            existing = None
        if existing is not None and existing.definition_hash == want:
            log.info("reusing zoo %s", target)
            return existing
        if any(target.iterdir()):
            raise BenchmarkError(f"{target}: exists and is not a zoo of {benchmark.name} "
                                 f"(size {benchmark.size}); pass force=True / --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    from mergezoo.eval.training import JobRunner, quiet_loading

    try:
        with quiet_loading(), JobRunner(workers).start() as jobs, \
                _ModelsSaved(tmp, expected_models(benchmark), benchmark.name, progress):
            started = time.perf_counter()
            writer = ZooWriter(tmp, benchmark.spec)
            data = benchmark.data()
            writer.save_datasets(data, description=benchmark.data_description,
                                 license=benchmark.data_license)
            benchmark.train_zoo(writer, data, jobs=jobs)
            train_seconds = time.perf_counter() - started
            log.info("%s: trained the zoo in %.1f s", benchmark.name, train_seconds)
            # sanity.json must exist before the manifest hashes the files
            if sanity:
                from mergezoo.eval.sanity import compute_sanity

                numbers = compute_sanity(benchmark, writer.models, tmp, jobs=jobs)
                (tmp / "sanity.json").write_text(json.dumps(numbers, indent=1) + "\n")
            writer.finish()
            total = time.perf_counter() - started
            (tmp / "build.json").write_text(json.dumps(
                {"train_seconds": round(train_seconds, 2), "total_seconds": round(total, 2),
                 "threads": _threads(), "workers": jobs.workers, "versions": _versions()},
                indent=1) + "\n")
            _move_into_place(tmp, target, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return BenchmarkZoo(target)


def expected_models(benchmark: Benchmark) -> int | None:
    """How many model folders a built-in zoo holds: base, experts per seed, multitask, oracles
    (None when the build parameters do not say how many seeds)."""
    seeds = benchmark.spec.params.get("seeds")
    if not seeds:
        return None
    return 1 + len(benchmark.held_in_cells) * len(seeds) + 1 + len(benchmark.held_out_cells)


class _ModelsSaved:
    """A progress bar of the model folders that appear under a zoo being built."""

    def __init__(self, root: Path, total: int | None, name: str, enabled: bool) -> None:
        import threading

        self.root, self.total, self.name, self.enabled = root, total, name, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _count(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(1 for p in self.root.iterdir() if p.is_dir() and p.name != "datasets"
                   and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file()))

    def _watch(self) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=self.total, desc=f"build {self.name} zoo", unit="model") as bar:
            while not self._stop.wait(0.5):
                bar.update(self._count() - bar.n)
            bar.update(self._count() - bar.n)

    def __enter__(self) -> "_ModelsSaved":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _move_into_place(tmp: Path, target: Path, force: bool) -> None:
    """Rename `tmp` to `target` atomically; with `force`, the old target is removed after."""
    old = None
    if target.exists():
        if not force and any(target.iterdir()):
            # another process finished the same build first: keep theirs
            log.info("zoo %s appeared while building; keeping it", target)
            return
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        if old is not None and not target.exists():
            os.rename(old, target)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
