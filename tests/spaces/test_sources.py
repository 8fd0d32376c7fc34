"""Where the Space's experts come from: Hub repo IDs (a pushed zoo), bench results folders."""

from __future__ import annotations

import json

import pytest

from mergezoo.errors import ModelNotFoundError, SpaceInputError
from mergezoo.spaces.playground import MergeSpec
from mergezoo.spaces.sources import hub_playgrounds, results_playgrounds
from mergezoo.zoo.push import push_folder
from zoo.conftest import WRITE_TOKEN


def test_hub_experts_of_a_pushed_zoo(hub, monkeypatch, tiny_playgrounds):
    """A zoo's base and two experts pushed to the Hub test server, then served by repo ID:
    the base comes from the experts' card, the benchmark from their tags."""
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    local = tiny_playgrounds[0]
    folders = [local.base] + [e.path for e in local.experts[:2]]
    ids = [f"org/{folder.name}" for folder in folders]
    for folder, repo in zip(folders, ids):
        push_folder(folder, repo)
    (pg,) = hub_playgrounds(ids[1:])
    assert pg.bench.name == "digits-domains" and pg.bench.size == "tiny"
    assert pg.expert_labels == ids[1:]
    image = local.examples()[1][1]
    spec = MergeSpec(pg.expert_labels, "ties", {"density": 0.3})
    pg.merge(spec)
    rows = dict(pg.classify(spec, image))
    # the same merge of the local folders gives the same probabilities
    local_spec = MergeSpec(local.expert_labels[:2], "ties", {"density": 0.3})
    local.merge(local_spec)
    assert rows["merge"] == dict(local.classify(local_spec, image))["merge"]
    assert rows["base"] == dict(local.classify(local_spec, image))["base"]

    with pytest.raises(SpaceInputError, match="mergezoo-bench"):
        _untagged(folders[1])


def _untagged(folder):
    import shutil
    import tempfile
    from pathlib import Path

    copy = Path(tempfile.mkdtemp()) / "plain"
    shutil.copytree(folder, copy)
    (copy / "README.md").write_text("---\nbase_model: digits-domains-base\n---\n# plain\n")
    push_folder(copy, "org/plain-expert")
    return hub_playgrounds(["org/plain-expert"])


def test_results_folder(tmp_path, tiny_playgrounds):
    zoo = tiny_playgrounds[0].zoo
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({
        "benchmark": "digits-domains", "size": "tiny", "rows": [],
        "zoo": {"path": str(zoo.root), "definition_hash": zoo.definition_hash}}))
    (pg,) = results_playgrounds(run)
    assert pg.results_dir == run and pg.zoo.root == zoo.root
    assert pg.expert_labels == tiny_playgrounds[0].expert_labels
    with pytest.raises(ModelNotFoundError, match="no results.json"):
        results_playgrounds(tmp_path)
