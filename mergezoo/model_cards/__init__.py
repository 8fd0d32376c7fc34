"""Model cards that make every merge reproducible, and `reproduce` to check them.

Works from plain data: the provenance (`mergezoo_merge.json`) and recipe
(`mergezoo_recipe.yaml`) a merge writes, and a benchmark's results.json.

Example:
    >>> from mergezoo.model_cards import render_card, write_card
    >>> card = render_card("merged")                      # doctest: +SKIP
    >>> write_card("merged", results="results.json")      # doctest: +SKIP
"""

from mergezoo.model_cards.card import read_merge, refresh_card, render_card, write_card
from mergezoo.model_cards.reproduce import ReproduceReport, reproduce

__all__ = ["ReproduceReport", "read_merge", "refresh_card", "render_card", "reproduce",
           "write_card"]
