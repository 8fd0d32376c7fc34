"""Shared fixtures: one tiny digits-domains zoo per test session, in a temporary cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    """A private MERGEZOO_CACHE for the session (restored afterwards)."""
    path = tmp_path_factory.mktemp("mergezoo-cache")
    old = os.environ.get("MERGEZOO_CACHE")
    os.environ["MERGEZOO_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MERGEZOO_CACHE", None)
    else:
        os.environ["MERGEZOO_CACHE"] = old


@pytest.fixture(scope="session")
def digits_tiny(zoo_cache):
    """(benchmark, zoo) for digits-domains at size tiny, built once per session."""
    from mergezoo.eval import build_zoo, get_benchmark

    bench = get_benchmark("digits-domains", size="tiny")
    return bench, build_zoo(bench)
