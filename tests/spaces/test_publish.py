"""The Publish tab through gradio_client: the session's merge, with its card, in one commit."""

from __future__ import annotations

import json

import pytest
from gradio_client.exceptions import AppError
from huggingface_hub import ModelCard, hf_hub_download
from safetensors.torch import load_file

from zoo.conftest import WRITE_TOKEN


def test_publish_pushes_the_merge_with_its_card(hub, client, tiny_playgrounds):
    pg = tiny_playgrounds[0]
    with pytest.raises(AppError, match="merge first"):
        client.predict(pg.name, "org/none", WRITE_TOKEN, False, api_name="/publish")
    experts = pg.expert_labels[:2]
    client.predict(pg.name, experts, "ties", json.dumps({"density": 0.3, "lambda": 1.2}), 0,
                   api_name="/merge_params")
    with pytest.raises(AppError) as err:
        client.predict(pg.name, "org/merged", "hf_not_a_real_token_123", False,
                       api_name="/publish")
    assert "hf_not_a_real_token_123" not in str(err.value)

    status = client.predict(pg.name, "org/merged", WRITE_TOKEN, True, api_name="/publish")
    assert "org/merged" in status and "one commit" in status and WRITE_TOKEN not in status
    posts = [p for p in hub.state.commit_posts if p["repo"] == "org/merged"]
    assert len(posts) == 1
    files = sorted(path for _, path in posts[0]["operations"])
    assert "README.md" in files and "model.safetensors" in files
    card = ModelCard.load(hf_hub_download("org/merged", "README.md", token=WRITE_TOKEN))
    assert {"merge", "mergezoo", "ties"} <= set(card.data.tags)
    assert pg.expert(experts[0]).path.name in card.text  # inputs named by their zoo folder
    assert "density" in card.text and "org/merged" in card.text
    for name in files:
        path = hf_hub_download("org/merged", name, token=WRITE_TOKEN)
        assert WRITE_TOKEN.encode() not in open(path, "rb").read(), name

    # the pushed weights are the merge the page made (same method, hyperparameters, seed)
    pushed = load_file(hf_hub_download("org/merged", "model.safetensors", token=WRITE_TOKEN))
    tv, _ = pg.task_vectors()
    index = [pg.expert_labels.index(e) for e in experts]
    in_memory = tv.select(index).merge("ties", {"density": 0.3, "lambda": 1.2})
    assert set(pushed) == set(in_memory)
    for key, tensor in in_memory.items():
        assert (pushed[key] == tensor).all(), key
