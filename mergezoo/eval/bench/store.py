"""The bench's record of finished jobs, so a re-run reuses them and an interrupted run resumes.

Each finished job is one JSON line `{"key": ..., "value": ...}` appended to
`OUT/.bench/jobs.jsonl` and flushed to disk before the next job starts; a line cut short by a
kill is ignored on reading. `run.json` beside it holds the arguments of the run that owns the
folder: a different run refuses to reuse it unless asked to overwrite.

Example:
    >>> store = JobStore(tmp_path / ".bench")                              # doctest: +SKIP
    >>> store.put("merge/ties/...", {"group0-inverted": 0.91})
    >>> store.get("merge/ties/...")
    {'group0-inverted': 0.91}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mergezoo.errors import OutputExistsError

RUN_FILE = "run.json"
JOBS_FILE = "jobs.jsonl"


class JobStore:
    """Finished jobs by key, persisted as JSON lines."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / JOBS_FILE
        self._done: dict[str, Any] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed run
                    continue
                self._done[entry["key"]] = entry["value"]
        self._file = None

    def __len__(self) -> int:
        return len(self._done)

    def __contains__(self, key: str) -> bool:
        return key in self._done

    def get(self, key: str) -> Any:
        return self._done.get(key)

    def put(self, key: str, value: Any) -> None:
        if self._file is None:
            # a line cut short by a kill must not swallow the next one
            if self.path.is_file() and self.path.stat().st_size and \
                    not self.path.read_bytes().endswith(b"\n"):
                with self.path.open("a") as f:
                    f.write("\n")
            self._file = self.path.open("a")
        self._file.write(json.dumps({"key": key, "value": value}, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._done[key] = value

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SharedStore:
    """A run's store layered over a store shared by every run on the same zoo: a job found in
    either is reused; a job run now is recorded in both. The bench keeps there the jobs that
    depend on nothing but the zoo (scores of the base, experts, multitask model, oracles,
    ensembles and greedy soups; the FLOPs of one evaluation), so a new run on a built zoo does
    not score them again. A job found only in the shared store is not copied into the run's.

    Example:
        >>> store = SharedStore(JobStore(out / ".bench"), eval_cache(zoo))   # doctest: +SKIP
    """

    def __init__(self, run: JobStore, shared: JobStore) -> None:
        self.run = run
        self.shared = shared

    def __contains__(self, key: str) -> bool:
        return key in self.run or key in self.shared

    def get(self, key: str) -> Any:
        return self.run.get(key) if key in self.run else self.shared.get(key)

    def put(self, key: str, value: Any) -> None:
        self.run.put(key, value)
        self.shared.put(key, value)


def eval_cache(zoo_root: Path, device: str) -> JobStore:
    """The store of zoo-only evaluations shared by the runs on one zoo:
    `$MERGEZOO_CACHE/evals/<zoo folder>-<digest>`, the digest over the zoo's manifest (the
    sha256 of every file), the device and the versions of torch and mergezoo, so a rebuilt or
    changed zoo, or another torch or mergezoo, never reuses a score."""
    import hashlib

    import torch

    import mergezoo
    from mergezoo.eval.zoo_cache import MANIFEST, cache_root

    digest = hashlib.sha256((zoo_root / MANIFEST).read_bytes())
    digest.update(f"|{device}|{torch.__version__}|{mergezoo.__version__}".encode())
    return JobStore(cache_root() / "evals" / f"{zoo_root.name}-{digest.hexdigest()[:16]}")


def claim_output(out: Path, run: dict[str, Any], *, overwrite: bool) -> bool:
    """Make `out` this run's folder. Returns True when it holds finished jobs of the same run
    (same arguments), which are then reused. A folder of another run, or anything else that is
    not empty, is refused unless `overwrite`, which empties it first."""
    import shutil

    state = out / ".bench"
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        previous = None
        if (state / RUN_FILE).is_file():
            try:
                previous = json.loads((state / RUN_FILE).read_text())
            except json.JSONDecodeError:
                previous = None
        if previous == run and not overwrite:
            return True
        if not overwrite:
            what = ("the results of another bench run (different arguments)" if previous
                    else "files that are not a mergezoo bench run")
            raise OutputExistsError(f"{out} holds {what}; choose another --out or pass "
                                    "--overwrite to replace it")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    state.mkdir(parents=True, exist_ok=True)
    tmp = state / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    tmp.replace(state / RUN_FILE)
    return False
