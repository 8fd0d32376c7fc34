"""Pulling into the Hub cache: SHAs, allow_patterns, pickles, offline mode, tokens."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mergezoo.cli import main
from mergezoo.errors import GatedRepoError, HubAccessError, ModelNotFoundError, UnsafeCheckpointError
from mergezoo.zoo.pull import pull_model
from mergezoo.zoo.resolve import resolve_model

from .conftest import OTHER_TOKEN, WRITE_TOKEN
from .helpers import seed_llama_zoo


def test_pull_records_the_commit_sha_and_fetches_only_what_a_merge_needs(hub, tiny):
    ids = seed_llama_zoo(hub.state, tiny)
    files = {p.relative_to(tiny.llama_experts[0]).as_posix(): p.read_bytes()
             for p in tiny.llama_experts[0].iterdir()}
    files["pytorch_model.bin"] = b"pickle bytes that must not be fetched"
    files["training_args.bin"] = b"more pickle"
    repo = hub.state.add_repo("org/with-extras", files)
    pulled = pull_model("org/with-extras")
    assert pulled.revision == repo.branches["main"]
    assert pulled.path.name == pulled.revision and pulled.path.is_dir()
    assert "models--org--with-extras" in str(pulled.path)
    assert (pulled.path / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert not (pulled.path / "pytorch_model.bin").exists()
    assert "pytorch_model.bin" not in hub.state.full_downloads()
    assert pulled.kind == "full"
    del ids


def test_revisions_resolve_to_commit_shas(hub, tiny):
    repo = hub.state.add_repo("org/versioned", tiny.llama_experts[0])
    first = repo.branches["main"]
    repo.tags["v1"] = first
    hub.state.add_repo("org/versioned", {"extra.json": b"{}"}, title="second")
    second = repo.branches["main"]
    assert first != second
    assert pull_model("org/versioned@v1").revision == first
    assert pull_model("org/versioned").revision == second
    assert pull_model(f"org/versioned@{first}").revision == first
    resolved = resolve_model("org/versioned@v1")
    assert (resolved.repo_id, resolved.revision) == ("org/versioned", first)
    assert resolved.path.name == first
    with pytest.raises(ModelNotFoundError, match="revision 'nope' does not exist"):
        pull_model("org/versioned@nope")


def test_pickle_only_repos_are_refused_unless_allowed(hub, tiny):
    import torch

    state = {"w": torch.ones(2, 2)}
    path = tiny.root / "pickled.bin"
    torch.save(state, path)
    hub.state.add_repo("org/pickled", {"config.json": b'{"model_type": "llama"}',
                                       "pytorch_model.bin": path.read_bytes()})
    with pytest.raises(UnsafeCheckpointError, match=r"org/pickled: only pickle checkpoints "
                                                    r"\(pytorch_model.bin\).*--allow-pickle"):
        pull_model("org/pickled")
    assert hub.state.full_downloads() == ["config.json"]  # refused before any weight download
    pulled = pull_model("org/pickled", allow_pickle=True)
    loaded = torch.load(pulled.path / "pytorch_model.bin", weights_only=True)
    assert torch.equal(loaded["w"], state["w"])


def test_offline_mode_works_from_the_cache(hub, tiny, offline):
    ids = seed_llama_zoo(hub.state, tiny)
    online = pull_model(ids["expert0"])
    n_requests = len(hub.state.requests)
    offline()
    again = pull_model(ids["expert0"])
    assert (again.path, again.revision) == (online.path, online.revision)
    assert resolve_model(ids["expert0"]).revision == online.revision
    from mergezoo.zoo.validate import validate_experts

    validate_experts([ids["expert0"]], base=str(tiny.llama_base))  # headers from the cache
    assert len(hub.state.requests) == n_requests  # not one request while offline
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        pull_model(ids["expert1"])


def test_private_repo_without_token_names_the_missing_token(hub, tiny, monkeypatch):
    hub.state.add_repo("org/secret", tiny.llama_experts[0], private=True)
    with pytest.raises(HubAccessError) as info:
        pull_model("org/secret")
    message = str(info.value)
    assert "org/secret" in message and "HF_TOKEN" in message and "no Hub token was found" in message
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    assert pull_model("org/secret").revision == hub.state.get_repo("org/secret").branches["main"]
    assert all(r.authorized for r in hub.state.requests[-3:])


def test_gated_repo_needs_an_accepted_token(hub, tiny, monkeypatch):
    hub.state.add_repo("org/gated", tiny.llama_experts[0], gated="manual", granted=("tester",))
    with pytest.raises(GatedRepoError, match=r"org/gated: the repo is gated.*no Hub token was found"):
        pull_model("org/gated")
    monkeypatch.setenv("HF_TOKEN", OTHER_TOKEN)
    with pytest.raises(GatedRepoError, match="the HF_TOKEN environment variable does not grant"):
        pull_model("org/gated")
    assert pull_model("org/gated", token=WRITE_TOKEN).revision


def test_tokens_are_never_printed_logged_or_written(hub, tiny, monkeypatch, capsys, caplog,
                                                    tmp_path):
    hub.state.add_repo("org/secret", tiny.llama_experts[0], private=True)
    monkeypatch.setenv("HF_TOKEN", OTHER_TOKEN)
    caplog.set_level(logging.DEBUG)
    assert main(["-v", "pull", "org/secret"]) == 2
    assert main(["-v", "pull", "org/missing-repo"]) == 2
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    assert main(["pull", "org/secret", "--json"]) == 0
    out = capsys.readouterr()
    assert "HF_TOKEN" in out.err  # the message names the token source...
    for text in (out.out, out.err, caplog.text):
        assert WRITE_TOKEN not in text and OTHER_TOKEN not in text  # ...never its value
    from huggingface_hub import constants
    for path in Path(constants.HF_HOME).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert WRITE_TOKEN.encode() not in data and OTHER_TOKEN.encode() not in data


def test_cli_pull_prints_shas_and_validates_with_base(hub, tiny, capsys):
    ids = seed_llama_zoo(hub.state, tiny)
    assert main(["pull", ids["expert0"], ids["lora0"], "--base", ids["base"], "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["repo_id"] for d in data] == [ids["expert0"], ids["lora0"], ids["base"]]
    assert [d["kind"] for d in data] == ["full", "lora", "full"]
    assert all(len(d["revision"]) == 40 and Path(d["path"]).is_dir() for d in data)
    hub.state.add_repo("org/bert", tiny.bert)
    assert main(["pull", "org/bert", "--base", ids["base"]]) == 2
    err = capsys.readouterr().err
    assert "architecture BertForSequenceClassification, but org/llama-base is" in err
    assert not any(f.endswith(".safetensors") and "bert" in r.path
                   for r in hub.state.resolve_requests("GET") if not r.range
                   for f in [r.filename])  # refused before downloading the bert weights


def test_sharded_checkpoints_are_validated_and_pulled(hub, tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from mergezoo.zoo.validate import validate_experts

    ids = seed_llama_zoo(hub.state, tiny)
    sharded = tmp_path / "sharded"  # the layout save_pretrained writes for big models
    shutil.copytree(tiny.llama_experts[0], sharded)
    state = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    keys = sorted(state)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    for name, part in zip(shards, halves):
        save_file({k: state[k] for k in part}, str(sharded / name), metadata={"format": "pt"})
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, part in zip(shards, halves) for k in part}}))
    hub.state.add_repo("org/sharded", sharded)
    validate_experts(["org/sharded"], base=ids["base"])
    header_reads = {r.filename for r in hub.state.resolve_requests("GET") if r.range}
    assert set(shards) <= header_reads
    assert not any(f.startswith("model-") for f in hub.state.full_downloads())
    pulled = pull_model("org/sharded")
    assert sorted(p.name for p in pulled.path.glob("model-*.safetensors")) == shards
