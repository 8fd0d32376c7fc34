"""Turn a model reference into a local folder, recording where it came from.

Local paths are used in place. Hub repo IDs (`org/name`, `org/name@revision`) are pulled into
the normal Hub cache with `pull_model` (safetensors, configs, tokenizer and adapter files; no
pickles unless allowed) and the commit SHA they were pulled at is recorded.

Example:
    >>> resolved = resolve_model("org/expert@v1")           # doctest: +SKIP
    >>> resolved.path, resolved.revision                    # doctest: +SKIP
    (PosixPath('.../models--org--expert/snapshots/3f1c...'), '3f1c...')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergezoo.errors import ModelNotFoundError
from mergezoo.zoo.manifest import ModelManifest
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


def resolve_model(ref: str | ModelRef | Path, *, allow_pickle: bool = False,
                  token: str | None = None, component: str | None = None,
                  pin: str | None = None, manifest: ModelManifest | None = None
                  ) -> ResolvedModel:
    """Resolve a reference to a local folder (Hub repos are pulled into the Hub cache).

    `pin` is the commit SHA to download (the one the model was validated at); without it the
    revision is resolved now.

    `component` (a diffusers subfolder such as "unet") pulls only that folder's weights, plus
    every config of the pipeline. `manifest` is the model's manifest as validation read it
    (`zoo.validate.validate_models`): the download is pinned to its commit and planned from its
    file list, so the Hub is not asked about the model a second time.
    """
    ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(str(ref))
    path = Path(ref.spec).expanduser()
    if path.exists():
        return ResolvedModel(ref=ref, path=path)
    if ref.is_local:
        raise ModelNotFoundError(f"{ref}: no such file or folder")
    from mergezoo.zoo.pull import pull_model

    pulled = pull_model(ref, allow_pickle=allow_pickle, token=token,
                        components=[component] if component else None, pin=pin,
                        manifest=manifest)
    return ResolvedModel(ref=ref, path=pulled.path, repo_id=pulled.repo_id,
                         revision=pulled.revision)
