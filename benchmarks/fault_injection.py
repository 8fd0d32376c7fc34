#!/usr/bin/env python
"""Fault injection for mergezoo (issue 13; a script, not a timed test).

Kills `mergezoo merge` (new outputs and `--overwrite`) and `mergezoo pull` (against the test Hub
server of tests/zoo/hub_server.py, whose downloads are slowed to ~5 MB/s so a kill lands in the
middle) at random points with SIGINT, SIGTERM and SIGKILL, many times, and checks after each:

- merges: the output path holds nothing or a complete model that loads (every tensor equal to
  the reference merge); with `--overwrite`, always a complete model; no temporary folder but
  those of a process just killed with SIGKILL, and none of those after the next run;
- pulls: every blob in the Hub cache matches its name (sha256), every snapshot file is whole,
  no partial download but those of a pull just killed with SIGKILL, none after the next pull;
  after a final, unkilled pull the model is complete.

Half of the kills come at a random time after the process starts (imports, validation,
planning), half at a random time after it began writing (a temporary output folder or a partial
download exists). Each run is a fresh process (~2 s of imports), so a few minutes give a few
dozen kills of each kind.

Usage:
    python benchmarks/fault_injection.py                        # 240 s
    python benchmarks/fault_injection.py --seconds 60 --seed 1 --json faults.json
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
SHAPES = {"embed.weight": (4096, 512), **{f"layers.{i}.weight": (1024, 1024) for i in range(6)},
          "norm.weight": (512,)}


def build_experts(root: Path) -> list[Path]:
    """Three ~8.4M-parameter float32 experts (34 MB each): a merge takes about a second."""
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    folders = []
    for i in range(3):
        folder = root / f"expert{i}"
        folder.mkdir(parents=True)
        save_file({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text('{"model_type": "toy"}')
        folders.append(folder)
    return folders


class Checker:
    """Runs one killed process at a time and checks what it left."""

    def __init__(self, work: Path, experts: list[Path], rng: random.Random):
        self.work, self.experts, self.rng = work, experts, rng
        self.outputs = work / "outputs"
        self.outputs.mkdir()
        self.reference = self._merge_once(work / "reference")
        self.reached = False
        self.survived: collections.Counter = collections.Counter()
        self.failures: list[str] = []

    # ----- merges ----------------------------------------------------------------------------
    def _merge_args(self, out: Path, overwrite: bool) -> list[str]:
        return (["merge", "--method", "average", *map(str, self.experts), "--out", str(out), "-q"]
                + (["--overwrite"] if overwrite else []))

    def _merge_once(self, out: Path) -> dict[str, torch.Tensor]:
        done = subprocess.run([sys.executable, "-m", "mergezoo.cli", *self._merge_args(out, False)],
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return load_file(str(out / "model.safetensors"))

    def _complete(self, out: Path) -> bool:
        try:
            tensors = load_file(str(out / "model.safetensors"))
        except Exception:  # noqa: BLE001 - anything unloadable is a failure
            return False
        return tensors.keys() == self.reference.keys() and all(
            torch.equal(tensors[k], self.reference[k]) for k in tensors)

    def _temp_owners(self) -> set[int]:
        owners = set()
        for p in self.outputs.iterdir():
            if ".mergezoo-" in p.name:
                owners.add(int(p.name.split(".mergezoo-")[1].split("-")[1]))
        return owners

    def merge(self, sig: str, overwrite: bool) -> None:
        out = self.outputs / "out"
        if overwrite and not out.exists():
            shutil.copytree(self.work / "reference", out)
        if not overwrite:
            shutil.rmtree(out, ignore_errors=True)
        def started(pid: int) -> bool:
            return pid in self._temp_owners()

        pid = self._run_and_kill(self._merge_args(out, overwrite), started, sig, work_s=1.5)
        what = f"merge{' --overwrite' if overwrite else ''} {sig} (pid {pid})"
        if out.exists() and not self._complete(out):
            self.failures.append(f"{what}: {out} holds an incomplete model")
        if overwrite and not out.exists():
            self.failures.append(f"{what}: --overwrite left no output")
        stale = self._temp_owners() - {pid if sig == "SIGKILL" else -1}
        if stale and self.reached:  # it started writing, so it cleaned up first
            self.failures.append(f"{what}: temporary folders of {sorted(stale)} remain")
        self.survived[f"merge{'-overwrite' if overwrite else ''} {sig}"] += 1

    # ----- pulls -----------------------------------------------------------------------------
    def _repo_cache(self) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE) / "models--org--big"

    def _partials(self) -> list[Path]:
        blobs = self._repo_cache() / "blobs"
        return sorted(blobs.glob("*.incomplete")) if blobs.is_dir() else []

    def _cache_sound(self) -> str | None:
        cache = self._repo_cache()
        for blob in (cache / "blobs").glob("*") if (cache / "blobs").is_dir() else []:
            if blob.name.endswith(".incomplete"):
                continue
            data = blob.read_bytes()
            git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            if blob.name not in (hashlib.sha256(data).hexdigest(), git):
                return f"blob {blob.name} does not match its content"
        for link in cache.glob("snapshots/*/*"):
            if link.exists() and link.name == "model.safetensors":
                try:
                    if load_file(str(link))["w"].shape != (6_000_000,):
                        return f"{link} is not the whole file"
                except Exception as err:  # noqa: BLE001
                    return f"{link} does not load: {err}"
        return None

    def pull(self, sig: str) -> None:
        if not self._partials():  # start from an empty cache, so the kill lands in a download
            shutil.rmtree(self._repo_cache(), ignore_errors=True)
        before = set(self._partials())
        pid = self._run_and_kill(["pull", "org/big"],
                                 lambda pid: bool(set(self._partials()) - before), sig, work_s=5.0)
        what = f"pull {sig} (pid {pid})"
        problem = self._cache_sound()
        if problem:
            self.failures.append(f"{what}: {problem}")
        new = set(self._partials()) - before
        if new and sig != "SIGKILL":
            self.failures.append(f"{what}: partial downloads left: {sorted(new)}")
        if self.reached and before & set(self._partials()):
            self.failures.append(f"{what}: a partial download of an earlier kill remains")
        self.survived[f"pull {sig}"] += 1

    # ----- both ------------------------------------------------------------------------------
    def _run_and_kill(self, args: list[str], started, sig: str, work_s: float) -> int:
        """Run `mergezoo ARGS`, send `sig` at a random point, wait for it. `started(pid)` says
        whether the process began writing; `self.reached` records whether it did before the
        kill (only then must it have cleaned up after earlier kills)."""
        proc = subprocess.Popen([sys.executable, "-m", "mergezoo.cli", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.reached = False
        from_start = self.rng.random() < 0.5  # anywhere from the start, or in the writing
        kill_at = time.monotonic() + (self.rng.uniform(0, 2.5 + work_s) if from_start else 60)
        while proc.poll() is None and time.monotonic() < kill_at:
            if not self.reached and started(proc.pid):
                self.reached = True
                if not from_start:
                    kill_at = time.monotonic() + self.rng.uniform(0, work_s)
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(SIGNALS[sig])
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            self.failures.append(f"{args[0]} {sig}: did not stop within 120 s")
        if "Traceback" in err:
            self.failures.append(f"{args[0]} {sig} (pid {proc.pid}): a traceback:\n{err[-800:]}")
        return proc.pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=240, help="how long to keep killing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the counts and failures here")
    args = parser.parse_args()

    from zoo.hub_server import HubServer, hub_environment

    work = Path(tempfile.mkdtemp(prefix="mergezoo-faults-"))
    rng = random.Random(args.seed)
    try:
        with HubServer() as hub:
            hub_environment(hub.url, work / "hf_home")  # the environment the children inherit
            big = work / "big"
            big.mkdir()
            save_file({"w": torch.arange(6_000_000, dtype=torch.float32)},
                      str(big / "model.safetensors"))
            (big / "config.json").write_text('{"model_type": "toy"}')
            hub.state.add_repo("org/big", big)
            hub.state.add_fault(r"/org/big/resolve/.*model\.safetensors", kind="slow",
                                method="GET")
            checker = Checker(work, build_experts(work / "experts"), rng)
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                sig = rng.choice(list(SIGNALS))
                kind = rng.choice(["merge", "merge-overwrite", "pull"])
                if kind == "pull":
                    checker.pull(sig)
                else:
                    checker.merge(sig, overwrite=kind == "merge-overwrite")
            # One last run of each, unkilled: everything clean and complete.
            out = checker.outputs / "out"
            done = subprocess.run([sys.executable, "-m", "mergezoo.cli",
                                   *checker._merge_args(out, True)], cwd=ROOT,
                                  capture_output=True, text=True)
            if done.returncode != 0 or not checker._complete(out) or checker._temp_owners():
                checker.failures.append(f"final merge: rc {done.returncode}, {done.stderr[-400:]}")
            done = subprocess.run([sys.executable, "-m", "mergezoo.cli", "pull", "org/big"],
                                  cwd=ROOT, capture_output=True, text=True)
            problem = checker._cache_sound()
            snapshot = list(checker._repo_cache().glob("snapshots/*/model.safetensors"))
            if done.returncode != 0 or problem or checker._partials() or not snapshot:
                checker.failures.append(f"final pull: rc {done.returncode}, {problem}, "
                                        f"{done.stderr[-400:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(checker.survived.values())
    for name, count in sorted(checker.survived.items()):
        print(f"{name:28} {count:4} kills")
    print(f"{total} kills, {len(checker.failures)} failures")
    for failure in checker.failures:
        print("FAILURE:", failure)
    if args.json:
        args.json.write_text(json.dumps({"kills": dict(checker.survived), "total": total,
                                         "failures": checker.failures}, indent=2) + "\n")
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
