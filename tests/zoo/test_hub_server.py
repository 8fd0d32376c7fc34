"""The test Hub speaks the protocol the real huggingface_hub client uses."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import errors as hf_errors

from .conftest import WRITE_TOKEN


def test_protocol_basics(hub):
    api = HfApi(token=WRITE_TOKEN)
    assert api.whoami()["name"] == "tester"
    assert httpx2.get(f"{hub.url}/api/agent-harnesses").json() == {"standardEnvVars": [],
                                                                  "harnesses": {}}
    repo = hub.state.add_repo("org/m", {"config.json": b'{"model_type": "bert"}',
                                        "sub/w.safetensors": b"\x00" * 64},
                              card={"tags": ["t"], "license": "mit"})
    sha = repo.branches["main"]
    head = httpx2.head(f"{hub.url}/org/m/resolve/main/sub/w.safetensors")
    assert head.headers["X-Repo-Commit"] == sha and head.headers["Content-Length"] == "64"
    assert head.headers["ETag"].strip('"') == head.headers["X-Linked-Etag"].strip('"')
    missing = httpx2.get(f"{hub.url}/org/m/resolve/main/nope.json")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    with pytest.raises(hf_errors.RemoteEntryNotFoundError):
        hf_hub_download("org/m", "nope.json")
    ranged = httpx2.get(f"{hub.url}/org/m/resolve/main/sub/w.safetensors",
                        headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and len(ranged.content) == 10
    assert ranged.headers["Content-Range"] == "bytes 10-19/64"

    info = api.model_info("org/m", files_metadata=True)
    assert info.sha == sha and "license:mit" in info.tags
    assert {s.rfilename for s in info.siblings} == {".gitattributes", "README.md", "config.json",
                                                    "sub/w.safetensors"}
    assert [f.path for f in api.list_repo_tree("org/m")] == ["sub", ".gitattributes", "README.md",
                                                             "config.json"]
    assert [f.path for f in api.list_repo_tree("org/m", recursive=True)][-1] == "sub/w.safetensors"
    paths = api.get_paths_info("org/m", ["config.json", "sub", "absent"])
    assert [p.path for p in paths] == ["config.json", "sub"]
    refs = api.list_repo_refs("org/m")
    assert refs.branches[0].target_commit == sha
    assert [c.title for c in api.list_repo_commits("org/m")] == ["Initial upload", "initial commit"]
    with pytest.raises(hf_errors.RevisionNotFoundError):
        api.model_info("org/m", revision="nope")
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        api.model_info("org/absent")


def test_commits_spaces_and_permissions(hub, tmp_path):
    api = HfApi(token=WRITE_TOKEN)
    url = api.create_repo("org/space", repo_type="space", space_sdk="gradio")
    assert url.repo_type == "space" and hub.state.get_repo("org/space", "space") is not None
    (tmp_path / "app.py").write_text("print('hi')\n")
    info = api.upload_folder(folder_path=tmp_path, repo_id="org/space", repo_type="space")
    assert info.oid == hub.state.get_repo("org/space", "space").branches["main"]
    assert api.list_repo_files("org/space", repo_type="space") == [".gitattributes", "README.md",
                                                                    "app.py"]
    with pytest.raises(hf_errors.HfHubHTTPError) as err:
        api.create_repo("elsewhere/x")
    assert err.value.response.status_code == 403
    with pytest.raises(hf_errors.HfHubHTTPError) as err:
        HfApi(token="hf_invalid").whoami()
    assert err.value.response.status_code == 401
