"""Publish an output folder to the Hub in ONE commit, so a pushed repo never lacks its card.

`push_folder` creates the repo (`create_repo(exist_ok=True)`) and sends every file of the folder
(weights, config, recipe, card, results, plots) in a single `create_commit`. Pushing over an
existing non-empty repo needs `overwrite=True` (the commit then also deletes remote files the
folder does not hold) or `create_pr=True` (the commit goes to a pull request). `dry_run=True`
returns the plan (files, sizes, target) without any network access.

Example:
    >>> plan = push_folder("out/merged", "org/merged", dry_run=True)     # doctest: +SKIP
    >>> [f for f, _ in plan.files]                                        # doctest: +SKIP
    ['README.md', 'config.json', 'model.safetensors', 'recipe.yaml', 'results.json']
    >>> push_folder("out/merged", "org/merged").commit_url                # doctest: +SKIP
    'https://huggingface.co/org/merged/commit/9a1f...'
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub import errors as hf_errors

from mergezoo.errors import HubAccessError, ModelNotFoundError, RepoNotEmptyError, UnsafePathError
from mergezoo.zoo.hub import endpoint, hub_api, hub_errors, token_source
from mergezoo.zoo.paths import leaves

log = logging.getLogger(__name__)

SKIP_PARTS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}
SKIP_NAMES = {".DS_Store"}
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class PushPlan:
    """What a push would send: every file of the folder, and where."""

    folder: Path
    repo_id: str
    files: list[tuple[str, int]]           # (path in repo, size in bytes)
    private: bool = False
    create_pr: bool = False
    overwrite: bool = False
    endpoint: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "repo_id": self.repo_id, "endpoint": self.endpoint,
                "private": self.private, "create_pr": self.create_pr, "overwrite": self.overwrite,
                "files": [{"path": p, "size": s} for p, s in self.files],
                "total_bytes": self.total_bytes}


@dataclass
class PushResult:
    """A finished push: the one commit (or pull request) that holds the folder."""

    repo_id: str
    commit_oid: str
    commit_url: str
    pr_url: str | None
    files: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    created_repo: bool = False

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "commit_oid": self.commit_oid,
                "commit_url": self.commit_url, "pr_url": self.pr_url, "files": self.files,
                "deleted": self.deleted, "created_repo": self.created_repo}


def check_repo_id(repo_id: str) -> None:
    """Raise ModelNotFoundError unless `repo_id` has the form namespace/name."""
    if not _REPO_ID.match(repo_id):
        raise ModelNotFoundError(f"{repo_id!r}: not a repo ID of the form namespace/name")


def plan_push(folder: str | Path, repo_id: str, *, private: bool = False, create_pr: bool = False,
              overwrite: bool = False, require_card: bool = True) -> PushPlan:
    """List the files of `folder` that a push to `repo_id` would upload (no network)."""
    root = Path(folder).expanduser()
    check_repo_id(repo_id)
    if not root.is_dir():
        raise ModelNotFoundError(f"{root}: no such folder to push")
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not (set(rel.parts) & SKIP_PARTS) and rel.name not in SKIP_NAMES \
                and not rel.name.endswith(".incomplete"):
            outside = leaves(root, path)
            if outside is not None:  # a link to the stored token would publish it
                raise UnsafePathError(f"{root}: {rel.as_posix()} is a link to a file outside the "
                                      f"folder ({outside}); refusing to push it")
            files.append((rel.as_posix(), path.stat().st_size))
    if not files:
        raise ModelNotFoundError(f"{root}: the folder is empty; nothing to push")
    if require_card and not (root / "README.md").is_file():
        raise ModelNotFoundError(f"{root}: no README.md model card; a pushed repo must carry its "
                                 "card (write one, or pass --allow-missing-card)")
    return PushPlan(root, repo_id, files, private=private, create_pr=create_pr,
                    overwrite=overwrite, endpoint=endpoint())


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False,
                dry_run: bool = False, overwrite: bool = False, create_pr: bool = False,
                commit_message: str | None = None, token: str | None = None,
                require_card: bool = True, repo_type: str = "model",
                space_sdk: str | None = None) -> PushPlan | PushResult:
    """Push every file of `folder` to `repo_id` in one commit (or return the plan if dry_run).

    `repo_type="space"` (with `space_sdk`, e.g. "gradio") publishes a Space the same way."""
    plan = plan_push(folder, repo_id, private=private, create_pr=create_pr, overwrite=overwrite,
                     require_card=require_card)
    if dry_run:
        return plan
    if token_source(token) is None:
        raise HubAccessError(f"{repo_id}: pushing needs a Hub token with write access; none was "
                             "found: set the HF_TOKEN environment variable (or run `hf auth login`)")
    api = hub_api(token)
    remote = _remote_files(api, repo_id, token, repo_type)
    content = [f for f in (remote or []) if f != ".gitattributes"]
    if content and not (overwrite or create_pr):
        shown = ", ".join(content[:5]) + (f" and {len(content) - 5} more" if len(content) > 5 else "")
        raise RepoNotEmptyError(f"{repo_id} already holds {len(content)} file(s) ({shown}); pass "
                                "--overwrite to replace its content in one commit, or --create-pr "
                                "to open a pull request instead")
    if remote is not None and private:
        log.warning("%s exists already; --private does not change its visibility", repo_id)
    with hub_errors(repo_id, token=token, what="creating the repo"):
        api.create_repo(repo_id, private=private, exist_ok=True, token=token,
                        repo_type=repo_type, space_sdk=space_sdk)
    created = remote is None
    local = {path for path, _ in plan.files}
    operations: list = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(plan.folder / path))
                        for path, _ in plan.files]
    deleted = sorted(set(content) - local) if overwrite and not create_pr else []
    operations += [CommitOperationDelete(path_in_repo=path) for path in deleted]
    message = commit_message or f"Upload {plan.folder.name} with mergezoo"
    try:
        with hub_errors(repo_id, token=token, what="committing"):
            info = api.create_commit(repo_id, operations, commit_message=message,
                                     create_pr=create_pr, token=token, repo_type=repo_type)
    except BaseException:
        if created:  # leave no empty, card-less repo behind
            try:
                api.delete_repo(repo_id, token=token, repo_type=repo_type)
            except (hf_errors.HfHubHTTPError, OSError):
                log.warning("could not delete the empty repo %s after the failed push", repo_id)
        raise
    return PushResult(repo_id=repo_id, commit_oid=info.oid, commit_url=str(info.commit_url),
                      pr_url=info.pr_url, files=sorted(local), deleted=deleted,
                      created_repo=created)


def _remote_files(api, repo_id: str, token: str | None,
                  repo_type: str = "model") -> list[str] | None:
    """Files of the repo's main branch, or None when the repo does not exist (for this token)."""
    try:
        with hub_errors(repo_id, token=token, what="listing the existing repo"):
            return api.list_repo_files(repo_id, token=token, repo_type=repo_type)
    except ModelNotFoundError:
        return None
