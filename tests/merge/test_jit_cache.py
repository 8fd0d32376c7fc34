"""The kernel cache never runs object code someone else could have planted (issue 13, item 1).

The tests run as root here, so "another user" is made with os.chown to an unused uid, and
folder modes are set explicitly; `unsafe_reason` also takes the uid to check against."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mergezoo.errors import ConfigurationError

pytest.importorskip("llvmlite")
from mergezoo.merge.accel import jit  # noqa: E402

OTHER_UID = 54321  # no such user here; any uid that is not ours


def _ir(name: str, shift: str) -> str:
    return f"define i64 @{name}(i64 %x) {{\n  %y = {shift}\n  ret i64 %y\n}}\n"


def _twice(name: str):
    return lambda: _ir(name, "shl i64 %x, 1")


def _plant(folder: Path, name: str) -> Path:
    """An attacker's object file for `name` that multiplies by 3 (not 2), under the exact file
    name the cache would look for, with a valid checksum."""
    obj = jit._compile(name, _ir(name, "mul i64 %x, 3"))
    path = folder / jit.cache_name(name)
    path.write_bytes(hashlib.sha256(obj).digest() + obj)
    return path


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(jit.CACHE_ENV, raising=False)
    return monkeypatch


def test_a_folder_owned_by_another_user_is_refused_and_its_planted_code_never_runs(
        tmp_path, no_env):
    cache_home = tmp_path / "home-cache"
    kernels_dir = cache_home / "mergezoo" / "kernels"
    kernels_dir.mkdir(parents=True)
    planted = _plant(kernels_dir, "mz_t_plant_owner")
    for p in (cache_home, cache_home / "mergezoo", kernels_dir, planted):
        os.chown(p, OTHER_UID, OTHER_UID)
    no_env.setenv("XDG_CACHE_HOME", str(cache_home))
    assert "owned by uid 54321" in jit.unsafe_reason(kernels_dir)
    assert jit.private_dir() is None
    fn = jit.function("mz_t_plant_owner", _twice("mz_t_plant_owner"), ctypes.c_int64,
                      [ctypes.c_int64])
    assert fn(21) == 42  # compiled in memory; the planted x*3 would give 63


def test_a_world_writable_default_folder_is_compiled_around_and_nothing_cached(
        tmp_path, no_env, caplog):
    kernels_dir = tmp_path / "mergezoo" / "kernels"
    kernels_dir.mkdir(parents=True)
    kernels_dir.chmod(0o777)
    planted = _plant(kernels_dir, "mz_t_plant_mode")
    no_env.setenv("XDG_CACHE_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="mergezoo.merge.accel.jit"):
        fn = jit.function("mz_t_plant_mode", _twice("mz_t_plant_mode"), ctypes.c_int64,
                          [ctypes.c_int64])
    assert fn(21) == 42
    assert "writable by its group or by others (mode 777)" in caplog.text
    assert sorted(kernels_dir.iterdir()) == [planted]  # nothing cached there


def test_an_ancestor_writable_by_others_makes_the_folder_unsafe(tmp_path):
    parent = tmp_path / "shared"
    folder = parent / "kernels"
    folder.mkdir(parents=True)
    folder.chmod(0o700)
    parent.chmod(0o775)
    assert "above it, is writable by its group" in jit.unsafe_reason(folder)
    parent.chmod(0o1777)  # sticky, like /tmp: others cannot rename what is ours
    assert jit.unsafe_reason(folder) is None
    parent.chmod(0o755)
    os.chown(parent, OTHER_UID, OTHER_UID)
    assert "above it, is owned by uid 54321" in jit.unsafe_reason(folder)
    os.chown(parent, 0, 0)
    assert jit.unsafe_reason(folder) is None
    assert "not by you" in jit.unsafe_reason(folder, uid=OTHER_UID)


def test_a_symlink_to_someone_elses_folder_is_checked_where_it_points(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    link = tmp_path / "mine"
    link.symlink_to(theirs)
    assert "owned by uid 54321" in jit.unsafe_reason(link)


def test_env_cache_writable_by_group_or_others_is_refused_by_name(tmp_path, no_env):
    for mode in (0o770, 0o707):
        folder = tmp_path / f"cache{mode:o}"
        folder.mkdir()
        folder.chmod(mode)
        no_env.setenv(jit.CACHE_ENV, str(folder))
        with pytest.raises(ConfigurationError, match=rf"MERGEZOO_KERNEL_CACHE=.*cache{mode:o} "
                           r"is not a private folder: .*writable by its group or by others"):
            jit.private_dir()


def test_the_cli_refuses_a_world_writable_env_cache_with_exit_2(tmp_path, toy_zoo):
    folder = tmp_path / "open-cache"
    folder.mkdir()
    folder.chmod(0o777)
    env = {**os.environ, jit.CACHE_ENV: str(folder)}
    out = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, "-m", "mergezoo.cli", "merge", "--method", "average", "--kernels",
         "fused", "-q", *map(str, toy_zoo["experts"]), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "MERGEZOO_KERNEL_CACHE" in done.stderr and "not a private folder" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and list(folder.iterdir()) == []


def test_a_created_cache_is_0700_its_files_0600_and_foreign_files_are_ignored(tmp_path, no_env):
    folder = tmp_path / "a" / "kernels"
    no_env.setenv(jit.CACHE_ENV, str(folder))
    fn = jit.function("mz_t_fresh", _twice("mz_t_fresh"), ctypes.c_int64, [ctypes.c_int64])
    assert fn(5) == 10
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (cached,) = folder.iterdir()
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    # Inside our own folder, a file that is not ours, or that others may write, is not loaded.
    name = "mz_t_foreign"
    planted = _plant(folder, name)
    os.chown(planted, OTHER_UID, OTHER_UID)
    assert jit._read(planted) is None
    planted.chmod(0o666)
    os.chown(planted, os.getuid(), os.getgid())
    assert jit._read(planted) is None
    planted.chmod(0o600)
    assert jit._read(planted) is not None  # the same file, ours and private, is loaded
    link = folder / "link.o"
    link.symlink_to(planted)
    assert jit._read(link) is None  # never through a link


def test_without_a_home_kernels_compile_in_memory(no_env, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home():
        raise RuntimeError("no home")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert jit.cache_dir() is None and jit.private_dir() is None
    fn = jit.function("mz_t_nohome", _twice("mz_t_nohome"), ctypes.c_int64, [ctypes.c_int64])
    assert fn(4) == 8
