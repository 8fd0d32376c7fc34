"""Model references: `org/name`, `org/name@revision`, or a local path.

Example:
    >>> ModelRef.parse("org/expert@v1.0")
    ModelRef(spec='org/expert', revision='v1.0')
    >>> ModelRef.parse("./experts/a").is_local
    True
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mergezoo.errors import InvalidRevisionError

# A Hub repo ID: "name" or "namespace/name", letters, digits, "-", "_", ".".
_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
# What git allows in a branch or tag name, less what could make a path of it: huggingface_hub
# stores refs at <cache>/refs/<revision>, so "../../x" or "/etc/x" would write outside the cache.
_REVISION = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
MAX_REVISION = 255


def check_revision(revision: str, label: str = "revision") -> str:
    """`revision` when it is a branch, a tag or a 40-hex commit SHA; else `InvalidRevisionError`
    (no `..`, no absolute path, no empty part, no `.lock` ending, no control characters).

    Example:
        >>> check_revision("refs/pr/3")
        'refs/pr/3'
        >>> check_revision("../../../tmp/x")
        Traceback (most recent call last):
        mergezoo.errors.InvalidRevisionError: revision '../../../tmp/x' is not a branch, tag or commit SHA (it holds '..')
    """
    why = None
    if not revision or len(revision) > MAX_REVISION:
        why = "empty" if not revision else f"longer than {MAX_REVISION} characters"
    elif ".." in revision:
        why = "it holds '..'"
    elif revision.startswith("/"):
        why = "it is an absolute path"
    elif not _REVISION.match(revision) or revision.endswith((".lock", ".")) or \
            any(part.startswith(".") for part in revision.split("/")):
        why = "only letters, digits, '.', '_', '-' and '/' between names may be used"
    if why:
        raise InvalidRevisionError(f"{label} {revision!r} is not a branch, tag or commit SHA ({why})")
    return revision


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from: a local folder or a Hub repo at an optional revision."""

    spec: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        text = str(text).strip()
        if not text:
            raise ValueError("empty model reference")
        if os.path.exists(text) or text.startswith((".", "/", "~")) or os.sep in text[:1]:
            return cls(spec=text)
        spec, at, revision = text.partition("@")
        if at:
            check_revision(revision, f"{spec}: revision")
        return cls(spec=spec, revision=revision or None)

    @property
    def is_local(self) -> bool:
        """True when the reference names an existing folder, or cannot be a repo ID."""
        path = Path(self.spec).expanduser()
        return path.exists() or not _REPO_ID.match(self.spec) or self.spec.startswith((".", "/", "~"))

    def __str__(self) -> str:
        return f"{self.spec}@{self.revision}" if self.revision else self.spec
