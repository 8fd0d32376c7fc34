"""A local zoo: a folder of Hub-style repo folders, each with a README.md model card.

Layout: `ZOO/org/name/` (or `ZOO/name/`), holding the model files and a README.md whose YAML
front matter carries the card metadata (tags, base_model, pipeline_tag, library_name...). It is
searched the same way as the Hub (`mergezoo search --zoo ZOO --tag T`) and its entries are used
as local paths. Benchmarks build their toy zoos with `add_to_zoo`.

Example:
    >>> add_to_zoo("zoo", "toy/expert-a", "runs/a", tags=["digits"], base_model="toy/base")  # doctest: +SKIP
    >>> [e.repo_id for e in list_zoo("zoo")]                                                 # doctest: +SKIP
    ['toy/expert-a']
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from mergezoo.errors import ModelNotFoundError, OutputExistsError
from mergezoo.zoo.manifest import detect_kind

MODEL_MARKERS = ("README.md", "config.json", "adapter_config.json", "model_index.json")


@dataclass
class ZooEntry:
    """One repo folder of a local zoo."""

    repo_id: str
    path: Path
    card: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return detect_kind(self.files)

    @property
    def last_modified(self) -> str:
        stamp = max((self.path / f).stat().st_mtime for f in self.files) if self.files else 0
        return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def list_zoo(zoo: str | Path) -> list[ZooEntry]:
    """Every repo folder (one or two levels deep) of the zoo at `zoo`, sorted by repo ID."""
    root = Path(zoo).expanduser()
    if not root.is_dir():
        raise ModelNotFoundError(f"local zoo {root}: no such folder")
    entries = []
    candidates = [p for p in root.iterdir() if p.is_dir()]
    candidates += [q for p in candidates for q in p.iterdir() if q.is_dir()]
    for folder in sorted(candidates):
        if not any((folder / m).is_file() for m in MODEL_MARKERS):
            continue
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        card = {}
        if (folder / "README.md").is_file():
            card = ModelCard.load(folder / "README.md", ignore_metadata_errors=True).data.to_dict()
        entries.append(ZooEntry(folder.relative_to(root).as_posix(), folder, card, files))
    return entries


def add_to_zoo(zoo: str | Path, repo_id: str, source: str | Path | None = None, *,
               tags: list[str] | None = None, base_model: str | list[str] | None = None,
               pipeline_tag: str | None = None, library_name: str | None = None,
               card_body: str = "", overwrite: bool = False, **card_fields) -> Path:
    """Copy the model folder `source` into the zoo as `repo_id`, with a card; return its path."""
    target = Path(zoo).expanduser() / repo_id
    if target.exists() and not overwrite:
        raise OutputExistsError(f"local zoo entry {target} exists; pass overwrite=True to replace it")
    if target.exists():
        shutil.rmtree(target)
    if source is not None:
        shutil.copytree(Path(source).expanduser(), target)
    target.mkdir(parents=True, exist_ok=True)
    data = ModelCardData(tags=tags, base_model=base_model, pipeline_tag=pipeline_tag,
                         library_name=library_name, **card_fields)
    body = card_body or f"# {repo_id}\n"
    ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").save(target / "README.md")
    return target
