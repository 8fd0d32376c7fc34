"""Turn a model reference into a local folder, recording where it came from.

Example:
    >>> resolved = resolve_model("./experts/a")            # doctest: +SKIP
    >>> resolved.path, resolved.revision                    # doctest: +SKIP
    (PosixPath('experts/a'), None)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergezoo.errors import ModelNotFoundError
from mergezoo.zoo.refs import ModelRef


@dataclass(frozen=True)
class ResolvedModel:
    """A model on local disk and its provenance (Hub repo and commit SHA, when from the Hub)."""

    ref: ModelRef
    path: Path
    repo_id: str | None = None
    revision: str | None = None  # commit SHA the files were pulled at

    def to_dict(self) -> dict:
        return {"ref": str(self.ref), "path": str(self.path), "repo_id": self.repo_id,
                "revision": self.revision}


def resolve_model(ref: str | ModelRef | Path, *, allow_pickle: bool = False) -> ResolvedModel:
    """Resolve a reference to a local folder (Hub repos are pulled into the Hub cache)."""
    ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(str(ref))
    path = Path(ref.spec).expanduser()
    if path.exists():
        return ResolvedModel(ref=ref, path=path)
    if ref.is_local:
        raise ModelNotFoundError(f"{ref}: no such file or folder")
    raise ModelNotFoundError(f"{ref}: not a local folder, and Hub pulling is not available yet")
