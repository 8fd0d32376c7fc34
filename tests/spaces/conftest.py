"""Fixtures: the tiny built-in zoos (shared with tests/eval when both run in one session), a
launched Space on 127.0.0.1, and the Hub test server of tests/zoo for deploy tests."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the `zoo` test package
from zoo.conftest import WRITE_TOKEN, hub, hub_server  # noqa: E402,F401  (fixtures)


@pytest.fixture(scope="session")
def space_cache(tmp_path_factory):
    """MERGEZOO_CACHE for the zoos: the one tests/eval set for this session if it ran first
    (its tiny zoos are then reused), else a private one."""
    if os.environ.get("MERGEZOO_CACHE"):
        yield Path(os.environ["MERGEZOO_CACHE"])
        return
    path = tmp_path_factory.mktemp("mergezoo-cache")
    os.environ["MERGEZOO_CACHE"] = str(path)
    yield path
    os.environ.pop("MERGEZOO_CACHE", None)


@pytest.fixture(scope="session")
def tiny_playgrounds(space_cache):
    """Playgrounds over the tiny digits-domains and digits-diffusion zoos, warmed."""
    from mergezoo.eval import build_zoo, get_benchmark
    from mergezoo.spaces.playground import Playground

    out = []
    for name in ("digits-domains", "digits-diffusion"):
        bench = get_benchmark(name, size="tiny")
        out.append(Playground.from_zoo(build_zoo(bench, workers=2), bench))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def space_url(tiny_playgrounds):
    """The app over the tiny zoos, launched on 127.0.0.1 for the session."""
    from mergezoo.spaces.launch import make_demo, serve

    demo = make_demo(tiny_playgrounds)
    serve(demo, port=free_port(), block=False)
    yield demo.local_url, demo
    demo.close()


@pytest.fixture
def client(space_url):
    from gradio_client import Client

    return Client(space_url[0], verbose=False)
