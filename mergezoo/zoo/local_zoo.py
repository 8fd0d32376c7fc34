"""A local zoo: a folder of Hub-style repo folders, each with a README.md model card.

Layout: `ZOO/org/name/` (or `ZOO/name/`), holding the model files and a README.md whose YAML
front matter carries the card metadata (tags, base_model, pipeline_tag, library_name...). It is
searched the same way as the Hub (`mergezoo search --zoo ZOO --tag T`) and its entries are used
as local paths. (The built-in benchmarks write theirs with `mergezoo.eval.zoo_writer`.)

Example:
    >>> [e.repo_id for e in list_zoo("zoo")]                                                 # doctest: +SKIP
    ['toy/expert-a']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from huggingface_hub import ModelCard

from mergezoo.errors import ModelNotFoundError
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
