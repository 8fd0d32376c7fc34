"""Checks every card test makes: the card parses as the Hub reads it."""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import ModelCard


def parse_card(path: Path) -> tuple[ModelCard, dict]:
    """(ModelCard.load of the file, its front matter read by a plain YAML parser)."""
    text = Path(path).read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert isinstance(front, dict)
    card = ModelCard.load(path)
    assert card.data.to_dict() == ModelCard(text).data.to_dict()
    return card, front
