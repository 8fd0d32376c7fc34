"""Find experts by tag on the Hub (`HfApi.list_models`) or in a local zoo (card metadata).

Example:
    >>> [e.repo_id for e in search_models(tags=["math"], base="org/base")]      # doctest: +SKIP
    ['org/math-expert']
    >>> find_experts(tag="digits", base="toy/base", zoo="zoo")                  # doctest: +SKIP
    ['zoo/toy/digits-a', 'zoo/toy/digits-b']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mergezoo.errors import ModelNotFoundError
from mergezoo.zoo.hub import hub_api, hub_errors
from mergezoo.zoo.local_zoo import list_zoo


@dataclass
class ExpertInfo:
    """One search hit: what `mergezoo search` prints per row."""

    repo_id: str
    kind: str                     # "full" | "LoRA" | "diffusers" | "diffusers LoRA"
    base_model: str | None
    tags: list[str] = field(default_factory=list)
    downloads: int | None = None
    last_modified: str | None = None
    pipeline_tag: str | None = None
    library_name: str | None = None
    path: str | None = None       # local zoo entries: the folder

    def to_dict(self) -> dict:
        return asdict(self)


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _kind(tags: list[str], library: str | None, files: list[str] | None = None) -> str:
    lowered = {t.lower() for t in tags} | {(library or "").lower()}
    if files is not None:
        from mergezoo.zoo.manifest import detect_kind

        return {"lora": "LoRA", "diffusers-lora": "diffusers LoRA"}.get(detect_kind(files),
                                                                      detect_kind(files))
    is_lora = bool(lowered & {"peft", "lora"}) or any(t.startswith("base_model:adapter:")
                                                     for t in lowered)
    if "diffusers" in lowered:
        return "diffusers LoRA" if is_lora else "diffusers"
    return "LoRA" if is_lora else "full"


def _base_from(card: dict | None, tags: list[str]) -> str | None:
    declared = (card or {}).get("base_model")
    if isinstance(declared, list):
        declared = declared[0] if declared else None
    if declared:
        return str(declared)
    for tag in tags:
        if tag.startswith("base_model:") and tag.count(":") == 1:
            return tag.split(":", 1)[1]
    return None


def _public_tags(tags: list[str]) -> list[str]:
    return [t for t in tags if not t.startswith(("base_model:", "region:"))]


def search_models(tags: str | Iterable[str] | None = None, *, base: str | None = None,
                  pipeline_tag: str | None = None, author: str | None = None,
                  search: str | None = None, limit: int | None = None,
                  token: str | None = None) -> list[ExpertInfo]:
    """Models on the Hub carrying every tag in `tags` (and matching the other filters)."""
    tags = _as_list(tags)
    filters = tags + ([f"base_model:{base}"] if base else [])
    api = hub_api(token)
    hits = []
    with hub_errors("the model list", token=token, what="searching"):
        for model in api.list_models(filter=filters or None, author=author, search=search,
                                     pipeline_tag=pipeline_tag, limit=limit, cardData=True):
            model_tags = list(model.tags or [])
            card = model.card_data.to_dict() if model.card_data is not None else {}
            base_model = _base_from(card, model_tags)
            if base and base_model != base and f"base_model:{base}" not in model_tags:
                continue
            if any(t not in model_tags for t in tags):
                continue
            hits.append(ExpertInfo(
                repo_id=model.id, kind=_kind(model_tags, model.library_name),
                base_model=base_model, tags=_public_tags(model_tags), downloads=model.downloads,
                last_modified=model.last_modified.isoformat() if model.last_modified else None,
                pipeline_tag=model.pipeline_tag, library_name=model.library_name))
    return hits


def search_zoo(zoo: str | Path, tags: str | Iterable[str] | None = None, *,
               base: str | None = None, pipeline_tag: str | None = None,
               author: str | None = None, search: str | None = None,
               limit: int | None = None) -> list[ExpertInfo]:
    """The same search over a local zoo folder, from each entry's card metadata."""
    tags = _as_list(tags)
    hits = []
    for entry in list_zoo(zoo):
        card = entry.card
        card_tags = _as_list(card.get("tags"))
        library = card.get("library_name")
        all_tags = card_tags + [t for t in (library, card.get("pipeline_tag")) if t]
        base_model = _base_from(card, [])
        if any(t not in all_tags for t in tags):
            continue
        if base and base_model != base:
            continue
        if pipeline_tag and card.get("pipeline_tag") != pipeline_tag:
            continue
        if author and entry.repo_id.split("/")[0] != author:
            continue
        if search and search.lower() not in entry.repo_id.lower():
            continue
        hits.append(ExpertInfo(repo_id=entry.repo_id, kind=_kind(all_tags, library, entry.files),
                               base_model=base_model, tags=card_tags, downloads=None,
                               last_modified=entry.last_modified,
                               pipeline_tag=card.get("pipeline_tag"), library_name=library,
                               path=str(entry.path)))
    return hits[:limit] if limit is not None else hits


def find_experts(tag: str | Iterable[str], base: str | None = None, zoo: str | Path | None = None,
                 *, pipeline_tag: str | None = None, author: str | None = None,
                 limit: int | None = None, token: str | None = None,
                 exclude_base: bool = True) -> list[str]:
    """Resolve a recipe's `experts: {tag: X, base: Y}` to a sorted list of model references.

    Hub searches return repo IDs; local zoo searches return the entries' folder paths. The base
    model itself is never returned as an expert. Raises `ModelNotFoundError` when nothing matches.
    """
    if zoo is not None:
        hits = search_zoo(zoo, tag, base=base, pipeline_tag=pipeline_tag, author=author,
                          limit=None)
        refs = sorted((h.repo_id, h.path) for h in hits)
        found = [path for repo_id, path in refs if not (exclude_base and repo_id == base)]
    else:
        hits = search_models(tag, base=base, pipeline_tag=pipeline_tag, author=author,
                             token=token)
        found = sorted(h.repo_id for h in hits if not (exclude_base and h.repo_id == base))
    if limit is not None:
        found = found[:limit]
    if not found:
        where = f"local zoo {zoo}" if zoo is not None else "the Hub"
        raise ModelNotFoundError(f"no experts tagged {_as_list(tag)}"
                                 f"{f' with base model {base}' if base else ''} in {where}")
    return found
