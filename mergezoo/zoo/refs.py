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

# A Hub repo ID: "name" or "namespace/name", letters, digits, "-", "_", ".".
_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")


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
        spec, _, revision = text.partition("@")
        return cls(spec=spec, revision=revision or None)

    @property
    def is_local(self) -> bool:
        """True when the reference names an existing folder, or cannot be a repo ID."""
        path = Path(self.spec).expanduser()
        return path.exists() or not _REPO_ID.match(self.spec) or self.spec.startswith((".", "/", "~"))

    def __str__(self) -> str:
        return f"{self.spec}@{self.revision}" if self.revision else self.spec
