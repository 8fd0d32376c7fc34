"""Fixtures: a Hub-compatible server on 127.0.0.1, a fresh HF_HOME per test, tiny models.

`hub` gives each test an empty server state and a temporary HF_HOME, with HF_ENDPOINT pointing
at the server and HF_HUB_DISABLE_XET=1; the clients' retry sleeps are skipped so fault tests
stay fast. `tiny` builds small random-init models once per session (from configs, no network).
"""

from __future__ import annotations

import time
import types

import pytest

from .hub_server import HubServer, hub_environment, restore_environment
from .models import TinyModels, build_tiny_models

WRITE_TOKEN = "hf_writer_token_0123456789"
OTHER_TOKEN = "hf_other_token_9876543210"


class _NoSleep(types.ModuleType):
    """The `time` module, minus the waiting (huggingface_hub's retry back-off sleeps)."""

    def __init__(self):
        super().__init__("time")

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        return None


@pytest.fixture(scope="session")
def hub_server():
    with HubServer() as server:
        yield server


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    """The server with an empty state, and the clients pointed at it with a fresh HF_HOME."""
    import huggingface_hub.file_download as file_download
    from huggingface_hub.utils import _http

    hub_server.state.reset()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(_http, "time", _NoSleep())
    monkeypatch.setattr(file_download, "time", _NoSleep())
    saved = hub_environment(hub_server.url, tmp_path / "hf_home")
    try:
        yield hub_server
    finally:
        restore_environment(saved)


@pytest.fixture
def offline(hub):
    """Switch the clients to HF_HUB_OFFLINE=1 (same HF_HOME) for the rest of the test."""
    from huggingface_hub import constants

    def go_offline():
        saved = hub_environment(hub.url, constants.HF_HOME, offline=True)
        return saved

    return go_offline


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
