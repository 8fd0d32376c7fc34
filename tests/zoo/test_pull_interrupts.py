"""Interrupted and racing pulls (issue 13, items 4, 5 and 9): Ctrl-C stops a pull at once and
leaves the Hub cache sound and resumable, saying what is left; what a SIGKILL leaves is removed
by the next pull; revisions are checked before they reach huggingface_hub; the commit a model
was validated at is the one downloaded and recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from mergezoo.cli import main
from mergezoo.errors import InvalidRevisionError
from mergezoo.merge import api, merge_models
from mergezoo.zoo.pull import pull_model
from mergezoo.zoo.refs import ModelRef

from .helpers import seed_llama_zoo
from .test_zoo_faults import assert_cache_is_sound

BIG = 6_000_000  # float32 entries: a 24 MB file, ~5 s through the "slow" fault (5 MB/s)


def _seed_big(hub, tmp_path: Path) -> Path:
    folder = tmp_path / "big"
    folder.mkdir()
    save_file({"w": torch.arange(BIG, dtype=torch.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "toy"}')
    hub.state.add_repo("org/big", folder)
    hub.state.add_fault(r"/org/big/resolve/.*model\.safetensors", kind="slow", method="GET")
    return folder


def _blobs() -> Path:
    return Path(constants.HF_HUB_CACHE) / "models--org--big" / "blobs"


def _partials() -> list[Path]:
    return sorted(_blobs().glob("*.incomplete")) if _blobs().is_dir() else []


def _start_pull() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mergezoo.cli", "pull", "org/big"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(_size(p) > 1 << 20 for p in _partials()):  # a megabyte into the weights
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_pull_stops_at_once_and_leaves_the_cache_resumable(hub, tmp_path, sig,
                                                                          code):
    _seed_big(hub, tmp_path)
    proc = _start_pull()
    sent = time.monotonic()
    proc.send_signal(sig)
    first = proc.stderr.readline()  # the CLI's last word, once the download has stopped
    took = time.monotonic() - sent
    err = first + proc.communicate(timeout=60)[1]
    assert proc.returncode == code, err
    # ~4 s of download were left; (the interpreter's own exit, after this, takes ~2 s more)
    assert took < 1.5, f"the pull went on for {took:.1f} s after the signal: {err}"
    assert "org/big: " in err and "files are complete in the Hub cache and a later pull " \
        "reuses them; no partial file was left" in err
    assert _partials() == []
    assert_cache_is_sound()
    pulled = pull_model("org/big")  # resumes: completes what is missing
    assert load_file(str(pulled.path / "model.safetensors"))["w"][-1] == BIG - 1
    assert_cache_is_sound()


def test_partial_files_of_a_killed_pull_are_removed_by_the_next_one(hub, tmp_path, caplog):
    _seed_big(hub, tmp_path)
    proc = _start_pull()
    proc.kill()
    proc.wait(timeout=30)
    left = _partials()
    assert left  # huggingface_hub never reuses these (their names are unique to the process)
    pulled = pull_model("org/big")
    assert _partials() == []
    assert "removed 1 partial download(s) of org/big" in caplog.text
    assert load_file(str(pulled.path / "model.safetensors"))["w"].shape == (BIG,)
    assert_cache_is_sound()


@pytest.mark.parametrize("revision", ["../../../../tmp/escape", "/etc/passwd", "main/../x",
                                      "a b", "refs/heads/x.lock", "", ".hidden"])
def test_revisions_that_are_not_refs_are_refused_before_the_hub_is_asked(hub, revision):
    with pytest.raises(InvalidRevisionError, match="is not a branch, tag or commit SHA"):
        ModelRef.parse(f"org/a@{revision}")
    assert main(["pull", f"org/a@{revision}"]) == 2
    assert hub.state.requests == []
    assert not Path("/tmp/escape").exists()


def test_valid_revisions_pass():
    for revision in ("main", "v1.0", "refs/pr/3", "release/2024-01", "a" * 40):
        assert ModelRef.parse(f"org/a@{revision}").revision == revision


def test_the_commit_validated_is_the_commit_downloaded_and_recorded(hub, tiny, tmp_path,
                                                                     monkeypatch):
    ids = seed_llama_zoo(hub.state, tiny)
    validated = {}
    real = api._validate_before_download

    def validate_then_push(*args, **kwargs):
        manifests, base = real(*args, **kwargs)
        validated.update({m.repo_id: m.revision for m in manifests})
        # Someone pushes other weights to the expert's branch right after validation.
        other = {k: torch.full_like(v, 7.0) for k, v in
                 load_file(str(tiny.llama_experts[1] / "model.safetensors")).items()}
        path = tmp_path / "other.safetensors"
        save_file(other, str(path))
        hub.state.add_repo(ids["expert0"], {"model.safetensors": path.read_bytes()})
        return manifests, base

    monkeypatch.setattr(api, "_validate_before_download", validate_then_push)
    before = hub.state.get_repo(ids["expert0"]).branches["main"]
    merge_models("average", [ids["expert0"], ids["expert1"]], out_dir=tmp_path / "out",
                 progress=False)
    assert hub.state.get_repo(ids["expert0"]).branches["main"] != before  # the branch moved
    assert validated[ids["expert0"]] == before
    provenance = json.loads((tmp_path / "out" / "mergezoo_merge.json").read_text())
    assert provenance["models"][0]["revision"] == before
    local = merge_models("average", tiny.llama_experts, out_dir=tmp_path / "local",
                         progress=False)
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert merged.keys() == load_file(str(local.out_dir / "model.safetensors")).keys()
    for key, value in load_file(str(local.out_dir / "model.safetensors")).items():
        assert torch.equal(merged[key], value), key  # the validated weights, not the 7s
