"""Downloads that stop when asked and leave the Hub cache as huggingface_hub expects it.

huggingface_hub's `snapshot_download` fetches files on worker threads, and Ctrl-C reaches only
the main thread: it used to wait for the running downloads to finish. `stop_on_interrupt`
gives `snapshot_download` a progress-bar class whose `update` (called for every chunk
received, on the worker threads) raises once Ctrl-C or SIGTERM has come, so each worker stops
at its next chunk and huggingface_hub's own clean-up removes its partial file and releases its
lock. A SIGKILL leaves `<blob>.<id>.incomplete` files that huggingface_hub never reuses (their
names are unique to the process); `remove_partial_downloads` removes those that no running
download holds the lock of.

Example:
    >>> with stop_on_interrupt() as bar:                                       # doctest: +SKIP
    ...     snapshot_download("org/a", tqdm_class=bar)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import tqdm as hf_tqdm

logger = logging.getLogger(__name__)


class DownloadStopped(Exception):
    """Raised on a download thread once the user interrupted the pull."""


def repo_cache(repo_id: str) -> Path:
    """The Hub cache folder of a model repo (models--org--name)."""
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[type]:
    """A tqdm class for `snapshot_download(tqdm_class=...)` whose updates raise after SIGINT or
    SIGTERM arrived inside this block; the signal itself goes on to its usual handler (Ctrl-C:
    KeyboardInterrupt in the main thread)."""
    stop = threading.Event()

    class Bar(hf_tqdm):
        def update(self, n=1):
            if stop.is_set():
                raise DownloadStopped("interrupted")
            return super().update(n)

    previous = {}
    # huggingface_hub reads the body in chunks of this size (10 MB) and updates the bar once a
    # chunk: smaller chunks let a worker notice the interrupt within a megabyte.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    constants.DOWNLOAD_CHUNK_SIZE = min(chunk, 1 << 20)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if not callable(handler):  # SIG_DFL / SIG_IGN: the process ends (or not) anyway
                continue

            def relay(signum, frame, handler=handler):
                stop.set()
                handler(signum, frame)

            previous[sig] = signal.signal(sig, relay)
    try:
        yield Bar
    finally:
        stop.set()  # a worker still running after an error stops too
        constants.DOWNLOAD_CHUNK_SIZE = chunk
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def remove_partial_downloads(repo_id: str) -> list[Path]:
    """Remove the `.incomplete` files in the repo's `blobs/` that no running download holds
    (huggingface_hub holds `.locks/<repo>/<blob>.lock` while it writes one); returns them."""
    blobs = repo_cache(repo_id) / "blobs"
    locks = Path(constants.HF_HUB_CACHE) / ".locks" / blobs.parent.name
    removed = []
    for partial in sorted(blobs.glob("*.incomplete")) if blobs.is_dir() else []:
        lock = locks / f"{partial.name.split('.')[0]}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o664)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a download of this blob is running
            os.close(fd)
            continue
        try:
            partial.unlink(missing_ok=True)
            removed.append(partial)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    if removed:
        logger.warning("removed %d partial download(s) of %s left by an interrupted pull: %s",
                       len(removed), repo_id, ", ".join(p.name for p in removed))
    return removed
