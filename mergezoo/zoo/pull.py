"""Pull Hub models into the normal Hub cache, recording the commit SHA they were pulled at.

`pull_model` resolves the revision (branch, tag or SHA) to a commit SHA, reads the repo's file
list and configs, refuses pickle-only repos unless `allow_pickle`, then calls
`snapshot_download(allow_patterns=...)` for the safetensors, configs, tokenizer and adapter
files only. With HF_HUB_OFFLINE=1 it answers from the cache. `trust_remote_code` is never used:
mergezoo reads weights, never a repo's Python code.

Example:
    >>> pulled = pull_model("org/expert@v1")             # doctest: +SKIP
    >>> pulled.revision, pulled.path                       # doctest: +SKIP
    ('3f1c...e2', PosixPath('~/.cache/huggingface/hub/models--org--expert/snapshots/3f1c...e2'))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import ResolvedRevision, snapshot_download

from mergezoo.errors import InvalidRevisionError, ModelNotFoundError, UnsafeCheckpointError
from mergezoo.zoo.downloads import remove_partial_downloads, repo_cache, stop_on_interrupt
from mergezoo.zoo.hub import hub_api, hub_errors, is_offline
from mergezoo.zoo.manifest import ModelManifest, inspect_hub, inspect_local
from mergezoo.zoo.refs import COMMIT_SHA, ModelRef

logger = logging.getLogger(__name__)

# What a merge needs from a repo: weights in safetensors, configs, tokenizer files, card.
PULL_PATTERNS = ["*.json", "*.safetensors", "README.md", "*.yaml", "*.txt", "*.model",
                 "*.tiktoken", "tokenizer*"]


@dataclass(frozen=True)
class PulledModel:
    """A Hub model in the local cache: where it is and exactly which commit it is."""

    repo_id: str
    revision: str                      # commit SHA
    requested_revision: str | None     # what the user asked for (branch, tag, SHA or None)
    path: Path
    kind: str
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision,
                "requested_revision": self.requested_revision, "path": str(self.path),
                "kind": self.kind, "files": list(self.files)}


def pull_model(ref: str | ModelRef, *, allow_pickle: bool = False, token: str | None = None,
               components: list[str] | None = None, pin: str | None = None,
               manifest: ModelManifest | None = None) -> PulledModel:
    """Download what a merge needs of a Hub model into the Hub cache; return path and SHA.

    `components` (diffusers subfolders such as "unet") limits which weight folders are fetched;
    configs of all of them are always fetched. `pin` is the commit SHA to download (the one
    the model was validated at); without it the revision is resolved now. `manifest`, the
    model's manifest as validation read it at a commit, pins the download to that commit and
    plans it from the manifest's file list (no second metadata request). Ctrl-C (or SIGTERM
    in the CLI) stops the download at once and raises KeyboardInterrupt with `left` saying what
    the cache holds; partial files that killed pulls of this repo left are removed first.
    """
    ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(str(ref))
    if ref.is_local:
        raise ModelNotFoundError(f"{ref}: a local path, not a Hub repo ID; nothing to pull")
    if is_offline():
        path, sha = cached_snapshot(ref, token=token)
        manifest = inspect_local(path, label=str(ref))
        _check_weights(manifest, str(ref), allow_pickle)
        return PulledModel(ref.spec, sha, ref.revision, path, manifest.kind, manifest.files)

    if manifest is not None:
        if manifest.repo_id != ref.spec or not manifest.revision:
            raise ValueError(f"pull_model: the manifest of {manifest.label} is not {ref}'s at a "
                             "commit")  # a caller's bug, not the user's input
        pin = manifest.revision
    api = hub_api(token)
    if pin is not None:
        if not COMMIT_SHA.match(pin):
            raise InvalidRevisionError(f"{ref}: pin {pin!r} is not a 40-hex commit SHA")
        resolved = ResolvedRevision(resolved=pin, initial=ref.revision, repo_id=ref.spec)
        _remember_ref(ref, pin)
    else:
        with hub_errors(ref.spec, revision=ref.revision, token=token,
                        what="resolving the revision"):
            resolved = api.resolve_revision(ref.spec, revision=ref.revision, token=token)
    sha = resolved.resolved
    if manifest is None:
        manifest = inspect_hub(ModelRef(ref.spec, sha), token=token, read_headers=False,
                               label=str(ref))
    _check_weights(manifest, str(ref), allow_pickle)
    patterns = _patterns(manifest, allow_pickle, components)
    remove_partial_downloads(ref.spec)
    wanted = [f for f in manifest.files if any(fnmatch(f, p) for p in patterns)]
    try:
        with hub_errors(ref.spec, revision=ref.revision, token=token, what="downloading"), \
                stop_on_interrupt() as progress:
            folder = Path(snapshot_download(ref.spec, revision=resolved, allow_patterns=patterns,
                                            token=token, tqdm_class=progress))
    except KeyboardInterrupt as err:
        err.left = _what_is_left(ref, sha, wanted)
        raise
    missing = [f for c in manifest.components.values() for f in c.weight_files
               if not (folder / f).is_file() and _wanted(f, components)]
    if missing:
        raise ModelNotFoundError(f"{ref}: download finished without {', '.join(missing)}")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return PulledModel(ref.spec, sha, ref.revision, folder, manifest.kind, files)


def _remember_ref(ref: ModelRef, sha: str) -> None:
    """Record `refs/<revision>` -> `sha` in the cache, as `resolve_revision` does, so that
    HF_HUB_OFFLINE=1 finds a pinned download by its branch or tag later."""
    if not ref.revision or ref.revision == sha:
        return
    try:
        from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision
        _cache_commit_hash_for_specific_revision(str(repo_cache(ref.spec)), ref.revision, sha)
    except (ImportError, OSError) as err:  # best effort, as huggingface_hub does
        logger.info("could not record %s -> %s in the cache: %s", ref, sha, err)


def _what_is_left(ref: ModelRef, sha: str, wanted: list[str]) -> str:
    """What an interrupted pull leaves in the Hub cache, in words."""
    snapshot = repo_cache(ref.spec) / "snapshots" / sha
    have = [f for f in wanted if (snapshot / f).is_file()]
    partial = list((repo_cache(ref.spec) / "blobs").glob("*.incomplete"))
    text = (f"{ref}: {len(have)} of {len(wanted)} files are complete in the Hub cache and a "
            "later pull reuses them")
    text += (f"; {len(partial)} partial file(s) remain in {repo_cache(ref.spec) / 'blobs'}, "
             "removed by the next pull" if partial else "; no partial file was left")
    return text


def cached_snapshot(ref: ModelRef, *, token: str | None = None) -> tuple[Path, str]:
    """(snapshot folder, commit SHA) of `ref` from the local Hub cache only."""
    with hub_errors(ref.spec, revision=ref.revision, token=token, what="reading the local cache"):
        folder = Path(snapshot_download(ref.spec, revision=ref.revision, allow_patterns=PULL_PATTERNS,
                                        local_files_only=True, token=token))
    return folder, folder.name


def _check_weights(manifest: ModelManifest, label: str, allow_pickle: bool) -> None:
    if not manifest.components or all(not c.weight_files and not c.pickle_files
                                      for c in manifest.components.values()):
        raise ModelNotFoundError(f"{label}: the repo holds no weights (*.safetensors): "
                                 f"{', '.join(manifest.files[:10]) or 'no files'}")
    unsafe = [f for c in manifest.components.values() if c.pickle_only for f in c.pickle_files]
    if unsafe and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{label}: only pickle checkpoints ({', '.join(unsafe)}); pickle files can run code "
            "when loaded. Use a safetensors version, or pass --allow-pickle to load them with "
            "torch.load(weights_only=True).")


def _wanted(filename: str, components: list[str] | None) -> bool:
    return components is None or "/" not in filename or filename.split("/")[0] in components


def _patterns(manifest: ModelManifest, allow_pickle: bool,
              components: list[str] | None) -> list[str]:
    patterns = list(PULL_PATTERNS)
    if components is not None:
        patterns = [p for p in patterns if p != "*.safetensors"] + ["*.safetensors.index.json"]
        for comp in manifest.components.values():
            if comp.name in components or comp.name == "":
                patterns += comp.weight_files
    if allow_pickle:
        patterns += [f for c in manifest.components.values() if c.pickle_only
                     for f in c.pickle_files]
    return patterns
