"""Kills, races and full disks lose nothing (issue 13, items 6-8; umask; disk full): SIGTERM
cleans up like Ctrl-C, what a SIGKILL leaves is removed by the next merge into the same
folder (which says so), two merges into one output cannot both write it, and an `--overwrite`
killed at any point leaves a complete output at the path (or one that the next run restores).

The slow merges run in a subprocess whose writer sleeps before each tensor, so the test can
signal it while it is writing."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from merge_helpers import assert_nothing_written, load_folder
from mergezoo.cli import main
from mergezoo.errors import OutputBusyError, OutputWriteError
from mergezoo.merge import atomic, merge_models
from mergezoo.merge.atomic import atomic_output_dir, output_lock, remove_stale

SLOW = """
import sys, time
from mergezoo.merge import writer
write = writer.ShardedSafetensorsWriter.write
def slow(self, key, tensor):
    time.sleep(0.25)
    write(self, key, tensor)
writer.ShardedSafetensorsWriter.write = slow
{patch}
from mergezoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _slow_merge(toy_zoo, out: Path, *extra: str, patch: str = "") -> subprocess.Popen:
    args = ["merge", "--method", "average", *map(str, toy_zoo["experts"]), "--out", str(out),
            "-q", *extra]
    return subprocess.Popen([sys.executable, "-c", SLOW.format(patch=patch), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mergezoo.cli", *args], capture_output=True,
                          text=True, timeout=120)


def _temp_dirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if ".mergezoo-" in p.name)


def _wait_for_temp(parent: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _temp_dirs(parent):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the merge never started writing"
        time.sleep(0.02)
    time.sleep(0.3)  # inside the write


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_sigterm_cleans_up_like_ctrl_c(toy_zoo, sig, code, word):
    out = toy_zoo["root"] / "out"
    proc = _slow_merge(toy_zoo, out)
    _wait_for_temp(out.parent, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"{word}; nothing was written" in err
    assert_nothing_written(out)


def test_what_a_sigkill_leaves_is_removed_by_the_next_merge_which_says_so(toy_zoo):
    out = toy_zoo["root"] / "out"
    proc = _slow_merge(toy_zoo, out)
    _wait_for_temp(out.parent, proc)
    proc.kill()
    proc.wait(timeout=30)
    (left,) = _temp_dirs(out.parent)
    assert f"-{proc.pid}-" in left.name
    assert not out.exists()
    other = toy_zoo["root"] / "other"  # any merge into the same parent folder
    done = _cli("merge", "--method", "average", *map(str, toy_zoo["experts"]), "--out",
                str(other), "-q")
    assert done.returncode == 0, done.stderr
    assert f"removed {left.name}, left by process {proc.pid} which is gone" in done.stderr
    assert _temp_dirs(out.parent) == [] and not out.exists()
    assert not list(out.parent.glob(".*.lock"))


def test_a_live_merges_temporary_folder_is_left_alone(tmp_path):
    mine = atomic.owned_temp_dir(tmp_path, "x")  # this process: alive
    assert remove_stale(tmp_path) == [] and mine.exists()
    reused = tmp_path / f".y.mergezoo-tmp-{os.getpid()}-1-abcd"  # same PID, other start time
    reused.mkdir()
    if atomic._start_time(os.getpid()):  # /proc tells start times apart
        assert remove_stale(tmp_path) and not reused.exists()


def test_a_second_merge_into_the_same_output_gets_a_clear_error(toy_zoo, capsys):
    out = toy_zoo["root"] / "out"
    proc = _slow_merge(toy_zoo, out)
    _wait_for_temp(out.parent, proc)
    assert main(["merge", "--method", "average", *map(str, toy_zoo["experts"]), "--out",
                 str(out), "--overwrite", "-q"]) == 2
    assert proc.poll() is None  # (the first was still writing)
    assert f"another merge (process {proc.pid}) is writing this output" in \
        capsys.readouterr().err
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert load_folder(out)  # the first merge's output, whole


def test_the_lock_is_exclusive_within_a_process_too(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(OutputBusyError, match=f"another merge \\(process {os.getpid()}\\)"):
            with atomic_output_dir(out):
                pass
    with atomic_output_dir(out) as tmp:  # released
        (tmp / "f").write_text("x")
    assert (out / "f").read_text() == "x"


def _old_output(out: Path) -> None:
    out.mkdir()
    (out / "model.safetensors").write_text("old")


KILL_AT_SECOND_REPLACE = """
import os, signal
from mergezoo.merge import atomic
atomic.exchange = lambda a, b: False  # a file system without renameat2's exchange
calls = []
real = os.replace
def replace(a, b):
    if os.path.isdir(a):  # the output's renames (files inside it are replaced too: the card)
        calls.append(a)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(a, b)
atomic.os.replace = replace
"""

KILL_AFTER_EXCHANGE = """
import os, signal
from mergezoo.merge import atomic
real = atomic.exchange
def exchange(a, b):
    assert real(a, b)
    os.kill(os.getpid(), signal.SIGKILL)
atomic.exchange = exchange
"""


def test_overwrite_killed_between_its_renames_is_recovered_by_the_next_run(toy_zoo):
    out = toy_zoo["root"] / "out"
    _old_output(out)
    proc = _slow_merge(toy_zoo, out, "--overwrite", patch=KILL_AT_SECOND_REPLACE)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # the window the fallback cannot close...
    done = _cli("merge", "--method", "average", *map(str, toy_zoo["experts"]), "--out",
                str(toy_zoo["root"] / "elsewhere"), "-q")
    assert done.returncode == 0, done.stderr
    assert f"recovered the previous output {out}" in done.stderr
    assert (out / "model.safetensors").read_text() == "old"  # ...is closed by the next run
    assert _temp_dirs(out.parent) == []


def test_overwrite_by_exchange_always_has_a_complete_output_at_the_path(toy_zoo):
    out = toy_zoo["root"] / "out"
    _old_output(out)
    proc = _slow_merge(toy_zoo, out, "--overwrite", patch=KILL_AFTER_EXCHANGE)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert load_folder(out).keys() == toy_zoo["base_state"].keys()  # the new output, whole
    assert main(["merge", "--method", "average", *map(str, toy_zoo["experts"]), "--out",
                 str(out), "--overwrite", "-q"]) == 0
    assert _temp_dirs(out.parent) == []  # the old output, swapped out, was removed


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_outputs_get_the_users_umask(toy_zoo, umask, mode):
    old = os.umask(umask)
    try:
        merge_models("average", toy_zoo["experts"], out_dir=toy_zoo["root"] / "out",
                     progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((toy_zoo["root"] / "out").stat().st_mode) == mode


def test_a_full_disk_is_a_named_error_and_nothing_is_written(toy_zoo, monkeypatch):
    from mergezoo.merge import writer

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.ShardedSafetensorsWriter, "_emit", full)
    out = toy_zoo["root"] / "out"
    with pytest.raises(OutputWriteError, match="no space left on device while writing it; "
                       "nothing was written"):
        merge_models("average", toy_zoo["experts"], out_dir=out, progress=False)
    assert_nothing_written(out)
    assert main(["merge", "--method", "average", *map(str, toy_zoo["experts"]), "--out",
                 str(out), "-q"]) == 2
    assert_nothing_written(out)
