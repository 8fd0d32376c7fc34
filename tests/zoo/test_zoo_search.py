"""Finding experts by tag on the Hub and in a local zoo."""

from __future__ import annotations

import json

import pytest

from mergezoo.cli import main
from mergezoo.errors import ModelNotFoundError
from mergezoo.zoo.local_zoo import list_zoo
from mergezoo.zoo.search import find_experts, search_models, search_zoo

from .helpers import add_to_zoo, seed_llama_zoo
from .models import LLAMA_BASE_ID


def test_search_by_tag_lists_kind_base_and_downloads(hub, tiny):
    seed_llama_zoo(hub.state, tiny)
    hub.state.add_repo("other/unrelated", {"config.json": b"{}"}, card={"tags": ["poetry"]})
    hits = {h.repo_id: h for h in search_models(["math"])}
    assert sorted(hits) == ["org/llama-lora-0", "org/llama-lora-1", "org/llama-math-0",
                            "org/llama-math-1"]
    assert hits["org/llama-math-1"].kind == "full" and hits["org/llama-math-1"].downloads == 20
    assert hits["org/llama-lora-0"].kind == "LoRA"
    assert all(h.base_model == LLAMA_BASE_ID for h in hits.values())
    assert "math" in hits["org/llama-math-0"].tags
    assert hits["org/llama-math-0"].last_modified
    # The client sent the tags as `filter` to /api/models.
    listing = [r for r in hub.state.requests if r.path == "/api/models"]
    assert listing


def test_search_filters_combine(hub, tiny):
    seed_llama_zoo(hub.state, tiny)
    hub.state.add_repo("someone/llama-math-x", tiny.llama_experts[0],
                       card={"tags": ["math"], "base_model": "someone/else"})
    assert [h.repo_id for h in search_models(["math", "mergezoo-expert"])] == \
        ["org/llama-math-0", "org/llama-math-1"]
    assert [h.repo_id for h in search_models(["math"], pipeline_tag="text-generation")] == \
        ["org/llama-math-0", "org/llama-math-1"]
    assert [h.repo_id for h in search_models(["math"], author="someone")] == ["someone/llama-math-x"]
    assert "someone/llama-math-x" not in [h.repo_id for h in search_models(["math"],
                                                                          base=LLAMA_BASE_ID)]
    assert [h.repo_id for h in search_models(["math"], search="lora-1")] == ["org/llama-lora-1"]


def test_find_experts_for_a_recipe(hub, tiny):
    seed_llama_zoo(hub.state, tiny)
    assert find_experts(tag="math", base=LLAMA_BASE_ID) == [
        "org/llama-lora-0", "org/llama-lora-1", "org/llama-math-0", "org/llama-math-1"]
    assert find_experts(tag="text-generation") == [  # without a base, any tagged model
        "org/llama-base", "org/llama-math-0", "org/llama-math-1"]
    assert find_experts(tag="math", base=LLAMA_BASE_ID, limit=1) == ["org/llama-lora-0"]
    with pytest.raises(ModelNotFoundError, match=r"no experts tagged \['chemistry'\]"):
        find_experts(tag="chemistry")


def test_cli_search_table_and_json(hub, tiny, capsys):
    seed_llama_zoo(hub.state, tiny)
    assert main(["search", "--tag", "math", "--base", LLAMA_BASE_ID]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["REPO", "ID", "KIND", "BASE", "MODEL", "TAGS", "DOWNLOADS",
                                "LAST", "MODIFIED"]
    assert any(line.startswith("org/llama-lora-0") and " LoRA " in line for line in table)
    assert main(["search", "--tag", "math", "--json", "--limit", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 2 and {"repo_id", "kind", "base_model", "tags", "downloads",
                               "last_modified"} <= set(data[0])


def test_local_zoo_search_reads_card_metadata(tmp_path, tiny, capsys):
    zoo = tmp_path / "zoo"
    add_to_zoo(zoo, "toy/base", tiny.llama_base, tags=["digits"], pipeline_tag="text-generation")
    add_to_zoo(zoo, "toy/digits-a", tiny.llama_experts[0], tags=["digits"], base_model="toy/base")
    add_to_zoo(zoo, "toy/digits-lora", tiny.loras[0], tags=["digits"], base_model="toy/base")
    add_to_zoo(zoo, "toy/words", tiny.llama_experts[1], tags=["words"], base_model="toy/base")
    assert [e.repo_id for e in list_zoo(zoo)] == ["toy/base", "toy/digits-a", "toy/digits-lora",
                                                 "toy/words"]
    hits = {h.repo_id: h for h in search_zoo(zoo, ["digits"], base="toy/base")}
    assert sorted(hits) == ["toy/digits-a", "toy/digits-lora"]
    assert hits["toy/digits-lora"].kind == "LoRA" and hits["toy/digits-a"].kind == "full"
    assert find_experts(tag="digits", base="toy/base", zoo=zoo) == [
        str(zoo / "toy/digits-a"), str(zoo / "toy/digits-lora")]
    assert main(["search", "--zoo", str(zoo), "--tag", "words", "--json"]) == 0
    assert [h["repo_id"] for h in json.loads(capsys.readouterr().out)] == ["toy/words"]
