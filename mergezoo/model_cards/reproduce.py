"""Re-run a published merge from its card's provenance and check every output file.

`reproduce(source)` takes a merged folder or a Hub repo ID (`org/name[@revision]`, downloaded
through the zoo's Hub client), reads its provenance and recipe, pins every Hub input to the
commit SHA recorded there, checks every local input (found by its path relative to the merged
folder) against the sha256 of its weight files, re-runs the merge, and compares the sha256 of
every output file three ways: the re-run against the card, and the published file against the
card. The card's descriptive files (README.md, recipe, provenance, results, plots) are not
compared; everything else is.

Example:
    >>> report = reproduce("org/merged")                  # doctest: +SKIP
    >>> report.ok, report.differing                       # doctest: +SKIP
    (True, {})
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mergezoo.errors import ModelNotFoundError, ReproduceError
from mergezoo.merge.api import PROVENANCE_FILE, run_recipe
from mergezoo.merge.provenance import output_hashes, weight_hashes
from mergezoo.merge.recipe import MergeRecipe
from mergezoo.model_cards.card import read_merge
from mergezoo.zoo.refs import ModelRef


@dataclass
class ReproduceReport:
    """The outcome: which files were compared, and why each differing one differs."""

    source: str
    compared: list[str] = field(default_factory=list)
    differing: dict[str, str] = field(default_factory=dict)   # file -> what differs
    out_dir: Path | None = None                               # the re-run, when kept

    @property
    def ok(self) -> bool:
        return not self.differing and bool(self.compared)

    def to_dict(self) -> dict:
        return {"source": self.source, "reproduced": self.ok, "compared": self.compared,
                "differing": self.differing,
                "out_dir": str(self.out_dir) if self.out_dir else None}


def _download(ref: ModelRef, token: str | None) -> Path:
    """Every file of a merged model's repo (weights included: they are checked too)."""
    from huggingface_hub import snapshot_download

    from mergezoo.zoo.hub import hub_errors

    with hub_errors(ref.spec, revision=ref.revision, token=token, what="downloading"):
        return Path(snapshot_download(ref.spec, revision=ref.revision, token=token))


def _locate(source: str | Path, token: str | None) -> tuple[Path, bool]:
    """(folder, whether it came from the Hub)."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return path, False
    ref = ModelRef.parse(str(source))
    if ref.is_local:
        raise ModelNotFoundError(f"{source}: no such folder, and not a Hub repo ID")
    return _download(ref, token), True


def _pinned_inputs(provenance: dict, folder: Path, from_hub: bool,
                   source: str) -> dict[str, str]:
    """{reference in the recipe: what to merge now}: Hub inputs at their recorded commit, local
    inputs by their path relative to the merged folder, once their hashes have been checked."""
    component = provenance.get("component")
    records = ([provenance["base_model"]] if provenance.get("base_model") else []) \
        + list(provenance.get("models") or [])
    pinned = {}
    for record in records:
        ref = record.get("ref")
        if record.get("repo_id"):
            revision = record.get("revision")
            pinned[ref] = f"{record['repo_id']}@{revision}" if revision else record["repo_id"]
            continue
        rel = record.get("path") or ref
        if from_hub:
            raise ReproduceError(
                f"{source}: input {rel!r} was a local folder when merged, so it cannot be "
                "fetched; reproduce from a copy of the merged folder placed so that this relative "
                "path leads to the input")
        local = (folder / rel).resolve()
        if not local.exists():
            raise ReproduceError(f"input {rel!r} (a local folder, relative to {folder}) is not "
                                 f"there: {local} does not exist")
        sub = component if component and (local / component).is_dir() else None
        found, recorded = weight_hashes(local, sub), record.get("sha256") or {}
        bad = sorted(f for f in set(found) | set(recorded) if found.get(f) != recorded.get(f))
        if bad:
            raise ReproduceError(f"input {rel!r}: its weight files differ from the hashes the "
                                 f"card records: {', '.join(bad)}")
        pinned[ref] = str(local)
    return pinned


def reproduce(source: str | Path, out_dir: str | Path | None = None, *, device: str = "auto",
              token: str | None = None, progress: bool = False, overwrite: bool = False,
              allow_pickle: bool = False) -> ReproduceReport:
    """Re-run the merge `source` (folder or repo ID) describes and compare every output file.

    The re-run is written to `out_dir` (kept) or to a temporary folder (removed afterwards).
    """
    folder, from_hub = _locate(source, token)
    provenance, recipe_text = read_merge(folder)
    if recipe_text is None:
        raise ReproduceError(f"{source}: the merged model has no recipe file; it cannot be re-run")
    recipe = MergeRecipe.from_yaml(recipe_text, f"{source}: recipe")
    pinned = _pinned_inputs(provenance, folder, from_hub, str(source))
    recipe = recipe.model_copy(update={
        "base_model": pinned.get(recipe.base_model, recipe.base_model) if recipe.base_model else None,
        "models": [m.model_copy(update={"model": pinned.get(m.model, m.model)})
                   for m in recipe.models]})

    scratch = None
    if out_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="mergezoo-reproduce-"))
        target = scratch / str(provenance.get("out_dir") or "merged")
    else:
        target = Path(out_dir).expanduser()
    try:
        run_recipe(recipe, out_dir=target, device=device, overwrite=overwrite,
                   progress=progress, allow_pickle=allow_pickle)
        rerun = json.loads((target / PROVENANCE_FILE).read_text())
        report = _compare(provenance, rerun, output_hashes(folder), str(source))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    report.out_dir = None if scratch is not None else target
    return report


def _hashes(provenance: dict) -> dict[str, str]:
    return {**(provenance.get("output_sha256") or {}), **(provenance.get("files_sha256") or {})}


def _compare(card: dict, rerun: dict, published: dict[str, str], source: str) -> ReproduceReport:
    expected, got = _hashes(card), _hashes(rerun)
    report = ReproduceReport(source=source, compared=sorted(set(expected) | set(got)))
    for name in report.compared:
        want = expected.get(name)
        why = []
        if want is None:
            why.append("the re-run writes it, but the card does not list it")
        elif got.get(name) is None:
            why.append("the card lists it, but the re-run did not write it")
        elif got[name] != want:
            why.append(f"the re-run gives sha256 {got[name]}, the card records {want}")
        if want is not None and published.get(name) != want:
            why.append("the published file is missing" if name not in published else
                       f"the published file has sha256 {published[name]}, the card records {want}")
        if why:
            report.differing[name] = "; ".join(why)
    # The inputs pulled now must be the inputs the card records (a Hub commit is immutable, so
    # this only fails when a repo's history was rewritten).
    for old, new in zip([card.get("base_model")] + list(card.get("models") or []),
                        [rerun.get("base_model")] + list(rerun.get("models") or [])):
        if old and new and (old.get("sha256") or {}) != (new.get("sha256") or {}):
            report.differing[f"input {old.get('ref')}"] = ("its weight files differ from the "
                                                           "hashes the card records")
    return report
