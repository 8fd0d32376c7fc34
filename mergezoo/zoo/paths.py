"""Paths named by a model's own files stay inside the model.

An index's `weight_map`, `model_index.json`, `adapter_config.json`, a symbolic link or a Hub
file name is data from whoever made the model: a value such as `/root/.cache/huggingface/token`
or `../../secret` must not make a merge read, or a push publish, a file that is not part of
the model. `member` checks such a relative path and `leaves` checks where a file really is
(after links). A Hub cache snapshot's files are links into its repo's `blobs/` folder, which
counts as inside.

Example:
    >>> member("model-00001-of-00002.safetensors", "model.safetensors.index.json: weight_map")
    'model-00001-of-00002.safetensors'
    >>> member("../../etc/passwd", "index: weight_map['w']")
    Traceback (most recent call last):
    mergezoo.errors.UnsafePathError: index: weight_map['w'] = '../../etc/passwd' leaves the model folder
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from mergezoo.errors import UnsafePathError


def member(name: object, entry: str, root: Path | None = None) -> str:
    """`name` when it is a relative path that stays inside the model (and, given the model's
    local folder `root`, really lies inside it after links); else `UnsafePathError` naming
    `entry` (where the value came from)."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise UnsafePathError(f"{entry} = {name!r} is not a file name")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts \
            or ".." in windows.parts:
        raise UnsafePathError(f"{entry} = {name!r} leaves the model folder")
    if root is not None:
        target = leaves(root, Path(root) / name)
        if target is not None:
            raise UnsafePathError(f"{entry} = {name!r} links outside the model folder "
                                  f"(to {target})")
    return name


def inside_roots(folder: Path) -> list[str]:
    """Real paths a file of `folder` may lie under: the folder itself, and for a Hub cache
    snapshot (`models--org--name/snapshots/<sha>`) its repo's `blobs/` folder."""
    real = os.path.realpath(folder)
    roots = [real]
    parent = Path(real).parent
    if parent.name == "snapshots" and parent.parent.name.startswith(("models--", "datasets--")):
        roots.append(str(parent.parent / "blobs"))
    return roots


def leaves(folder: Path, path: Path) -> str | None:
    """Where `path` (a file of `folder`) really is, when links take it out of `folder`;
    None when it stays inside."""
    real = os.path.realpath(path)
    for root in inside_roots(folder):
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return None
    return real
