"""Fixtures of the merge-engine tests; the helpers live in merge_helpers.py (a unique module
name, since other test folders have their own conftest.py)."""

from merge_helpers import toy_zoo  # noqa: F401  (a fixture)
