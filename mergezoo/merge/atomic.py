"""Output folders that appear whole or not at all, whatever kills the process, and when.

`atomic_output_dir(out)` takes an exclusive lock on `out` (a second merge into it gets
`OutputBusyError`), yields a temporary folder beside it and, on success, moves it into place:
with `overwrite`, by exchanging the two folders in one `renameat2(RENAME_EXCHANGE)`, so a
complete output is at `out` at every instant (where the file system cannot exchange, the old
output is moved aside first and a run that dies in between leaves it to be moved back by the
next run). On an error, Ctrl-C or SIGTERM (the CLI turns it into the same exception) the
temporary folder is removed. A SIGKILL cannot be caught: each temporary folder's name records
its owner's PID and start time, and the next merge into the same parent folder removes those
whose owner is gone, and logs that it did. The finished folder gets the user's umask.

Example:
    >>> with atomic_output_dir("out/merged", overwrite=True) as tmp:     # doctest: +SKIP
    ...     (tmp / "config.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from mergezoo.errors import OutputBusyError, OutputExistsError, OutputWriteError

logger = logging.getLogger(__name__)

_OWNED = re.compile(r"^\.(?P<name>.+)\.mergezoo-(?P<kind>tmp|old|full)-(?P<pid>\d+)-"
                    r"(?P<start>\d+)-[0-9a-f]+$")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _start_time(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), None when there is no such
    process; 0 where /proc cannot tell (then the PID alone identifies the owner)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after "(comm)"


def owned_temp_dir(parent: Path, name: str, kind: str = "tmp") -> Path:
    """A new folder `.{name}.mergezoo-{kind}-{pid}-{start}-{random}` in `parent` (mode 0700)
    whose name says which process owns it, so that a later run can remove it once that
    process is gone."""
    pid = os.getpid()
    path = parent / f".{name}.mergezoo-{kind}-{pid}-{_start_time(pid) or 0}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    return path


def _owner_gone(pid: int, start: int) -> bool:
    now = _start_time(pid)
    return now is None or (start != 0 and now != 0 and now != start)


def remove_stale(parent: Path) -> list[str]:
    """Remove the temporary folders in `parent` whose owning process is gone (killed with
    SIGKILL, or by a power cut), after moving back an old output that an interrupted
    `--overwrite` had moved aside. Returns what it did, one line each, and logs it."""
    done: list[str] = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return done
    for path in entries:
        if path.name.startswith(".") and path.name.endswith(".lock"):
            _remove_if_unlocked(path)
            continue
        match = _OWNED.match(path.name)
        if not match or not _owner_gone(int(match["pid"]), int(match["start"])):
            continue
        out = parent / match["name"]
        if match["kind"] == "old" and not out.exists() and (path / "old").exists():
            os.rename(path / "old", out)  # the only copy: the new output never arrived
            done.append(f"recovered the previous output {out} (a merge with --overwrite was "
                        f"killed while replacing it; process {match['pid']})")
        shutil.rmtree(path, ignore_errors=True)
        done.append(f"removed {path.name}, left by process {match['pid']} which is gone")
    for line in done:
        logger.warning("%s", line)
    return done


def _remove_if_unlocked(lock: Path) -> None:
    """Remove a lock file no process holds (its owner was killed); `output_lock` checks that
    the file it locked is still the one at the path, so removing it races with nobody."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(lock).st_ino == os.fstat(fd).st_ino:
            os.unlink(lock)
    except OSError:  # held (BlockingIOError), or gone meanwhile
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output path `out` (a `.{name}.lock` file beside it,
    removed on release); `OutputBusyError` when another process holds it."""
    lock = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise OutputBusyError(f"{out}: another merge (process {holder or '?'}) is writing "
                                  "this output now; wait for it, or choose another --out"
                                  ) from None
        # The holder before us may have removed the file after we opened it: lock the file
        # that is at the path, or two processes would each hold a lock on a different one.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # (not thread-safe: only where /proc cannot tell)
    os.umask(mask)
    return mask


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` in one step (Linux renameat2); False where the system or
    the file system cannot (the caller then renames in two steps)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _replace(tmp: Path, out: Path) -> None:
    """Put `tmp` at `out`, replacing what is there; a complete output is at `out` throughout
    when the file system can exchange two paths."""
    if exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old output
        return
    aside = owned_temp_dir(out.parent, out.name, "old")
    os.replace(out, aside / "old")  # killed after this: the next run moves it back
    os.replace(tmp, out)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` at once.

    On any error (or Ctrl-C, or SIGTERM in the CLI) the temporary folder is removed and
    `out_dir` is left as it was. An existing `out_dir` is replaced only with `overwrite=True`.
    Another merge into the same `out_dir` meanwhile gets `OutputBusyError`; a disk that fills
    up gives `OutputWriteError`.
    """
    out = Path(out_dir).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        remove_stale(out.parent)
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite (overwrite=True) to "
                                    "replace it", path=str(out))
        tmp = owned_temp_dir(out.parent, out.name)
        try:
            yield tmp
            tmp.chmod(0o777 & ~_umask())  # like any folder the user makes (mkdtemp's is 0700)
            if out.exists() or out.is_symlink():
                _replace(tmp, out)
            else:
                os.rename(tmp, out)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if err.errno in DISK_FULL:
                raise OutputWriteError(f"{out}: {os.strerror(err.errno).lower()} while writing "
                                       "it; nothing was written") from None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
