"""Faults: server errors, connections dropped mid-file, missing and unauthorised repos.

Each must end in a clear mergezoo error, with no corrupt or partial file left in the cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import constants

from mergezoo.cli import main
from mergezoo.errors import HubAccessError, HubUnavailableError, ModelNotFoundError
from mergezoo.zoo.pull import pull_model
from mergezoo.zoo.resolve import resolve_model


def _cache_files() -> list[Path]:
    return [p for p in Path(constants.HF_HUB_CACHE).rglob("*") if p.is_file()]


def assert_cache_is_sound() -> None:
    """No temporary download left, and every blob's content matches its name (its etag)."""
    for path in _cache_files():
        assert not path.name.endswith(".incomplete"), f"partial download left: {path}"
        if path.parent.name == "blobs":
            data = path.read_bytes()
            git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            assert path.name in (hashlib.sha256(data).hexdigest(), git_sha1), f"corrupt {path}"


def _snapshot_weights() -> list[Path]:
    return [p for p in Path(constants.HF_HUB_CACHE).rglob("snapshots/*/*.safetensors")]


def test_server_error_on_model_info(hub, tiny):
    hub.state.add_repo("org/a", tiny.llama_experts[0])
    hub.state.add_fault(r"^/api/models/org/a", status=500)
    with pytest.raises(HubUnavailableError, match=r"org/a: the Hub at http://127\.0\.0\.1:\d+ "
                                                  r"answered HTTP 500"):
        resolve_model("org/a")
    assert _snapshot_weights() == []
    assert_cache_is_sound()


def test_server_error_on_the_weight_file(hub, tiny):
    hub.state.add_repo("org/a", tiny.llama_experts[0])
    hub.state.add_fault(r"/resolve/.*/model\.safetensors$", status=503)
    with pytest.raises(HubUnavailableError, match=r"org/a: the Hub at .* answered HTTP 503"):
        pull_model("org/a")
    assert _snapshot_weights() == []
    assert_cache_is_sound()
    assert len([r for r in hub.state.requests if r.status == 503]) > 1  # the client retried


def test_connection_closed_in_the_middle_of_a_file(hub, tiny):
    hub.state.add_repo("org/a", tiny.llama_experts[0])
    fault = hub.state.add_fault(r"/resolve/.*/model\.safetensors$", kind="close", method="GET")
    with pytest.raises(HubUnavailableError, match="org/a: the connection to the Hub .* failed"):
        pull_model("org/a")
    assert fault.hits > 1  # the client tried to resume before giving up
    assert _snapshot_weights() == []
    assert_cache_is_sound()
    # Once the network is back, the same pull completes and the file is intact.
    hub.state.faults.clear()
    pulled = pull_model("org/a")
    assert (pulled.path / "model.safetensors").read_bytes() == \
        (tiny.llama_experts[0] / "model.safetensors").read_bytes()
    assert_cache_is_sound()


def test_a_dropped_connection_once_is_retried(hub, tiny):
    hub.state.add_repo("org/a", tiny.llama_experts[0])
    hub.state.add_fault(r"/resolve/.*/model\.safetensors$", kind="close", method="GET", times=1)
    pulled = pull_model("org/a")
    assert (pulled.path / "model.safetensors").read_bytes() == \
        (tiny.llama_experts[0] / "model.safetensors").read_bytes()
    gets = [r for r in hub.state.resolve_requests("GET") if r.filename == "model.safetensors"]
    assert len(gets) == 2  # the cut-off transfer, then the retry
    assert_cache_is_sound()


def test_missing_repo(hub, capsys):
    with pytest.raises(ModelNotFoundError, match=r"org/nope: no such model repo on the Hub at "
                                                 r"http://127\.0\.0\.1:\d+"):
        resolve_model("org/nope")
    assert main(["pull", "org/nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mergezoo pull: error: org/nope: no such model repo")
    assert "Traceback" not in err
    assert not list(Path(constants.HF_HUB_CACHE).glob("models--org--nope/snapshots/*"))


def test_unauthorised_repo(hub, tiny, capsys):
    hub.state.add_repo("org/private", tiny.llama_experts[0], private=True)
    with pytest.raises(HubAccessError, match=r"org/private: the Hub at .* refused access "
                                             r"\(HTTP 401\).*set the HF_TOKEN"):
        resolve_model("org/private")
    hub.state.add_repo("org/other", tiny.llama_experts[0])
    hub.state.add_fault(r"^/api/models/org/other", status=401)
    assert main(["pull", "org/other"]) == 2
    assert "org/other: the Hub refused access (HTTP 401)" in capsys.readouterr().err
    assert _snapshot_weights() == []
    assert_cache_is_sound()


def test_faults_while_validating_stop_before_any_download(hub, tiny):
    from mergezoo.zoo.validate import validate_experts

    hub.state.add_repo("org/base", tiny.llama_base)
    hub.state.add_repo("org/a", tiny.llama_experts[0])
    hub.state.add_fault(r"/org/a/resolve/.*/model\.safetensors$", status=500)
    with pytest.raises(HubUnavailableError, match="org/a"):
        validate_experts(["org/a"], base="org/base")
    assert not [f for f in hub.state.full_downloads() if f.endswith(".safetensors")]
