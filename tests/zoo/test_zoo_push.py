"""Publishing: one commit with every file, dry runs, existing repos, PRs, failures."""

from __future__ import annotations

import json
import shutil

import pytest

from mergezoo.cli import main
from mergezoo.errors import HubAccessError, HubUnavailableError, ModelNotFoundError, RepoNotEmptyError
from mergezoo.zoo.push import PushPlan, push_folder

from .conftest import WRITE_TOKEN


@pytest.fixture
def out_dir(tmp_path, tiny):
    out = tmp_path / "merged"
    shutil.copytree(tiny.llama_experts[0], out)
    (out / "README.md").write_text("---\ntags: [merge, mergezoo, ties]\nbase_model:\n"
                                   "- org/llama-base\nbase_model_relation: merge\n---\n# merged\n")
    (out / "mergezoo_recipe.yaml").write_text("merge_method: ties\n")
    (out / "results.json").write_text(json.dumps({"rows": []}))
    (out / "plots").mkdir()
    (out / "plots" / "scatter.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (out / ".cache").mkdir()
    (out / ".cache" / "junk").write_text("local only")
    return out


def test_push_sends_every_file_in_one_commit(hub, out_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    result = push_folder(out_dir, "org/merged")
    expected = ["README.md", "config.json", "generation_config.json", "mergezoo_recipe.yaml",
                "model.safetensors", "plots/scatter.png", "results.json"]
    assert result.files == expected and result.created_repo
    assert len(hub.state.commit_posts) == 1  # ONE commit
    assert sorted(path for _, path in hub.state.commit_posts[0]["operations"]) == expected
    repo = hub.state.get_repo("org/merged")
    head = repo.resolve("main")
    assert result.commit_oid == head.oid and result.commit_url.endswith(f"/org/merged/commit/{head.oid}")
    for path in expected:
        assert head.files[path].data == (out_dir / path).read_bytes()
    assert head.files["model.safetensors"].lfs  # large binaries went through the LFS batch API
    assert any(r.path.startswith("/lfs-upload/") for r in hub.state.requests)
    assert not repo.private


def test_dry_run_lists_files_and_target_without_network(hub, out_dir, capsys):
    plan = push_folder(out_dir, "org/merged", dry_run=True)
    assert isinstance(plan, PushPlan) and "plots/scatter.png" in [p for p, _ in plan.files]
    assert ".cache/junk" not in [p for p, _ in plan.files]
    assert main(["push", str(out_dir), "org/merged", "--dry-run", "--private"]) == 0
    out = capsys.readouterr().out
    assert f"to {hub.url}/org/merged (private) in one commit" in out
    assert "model.safetensors" in out and "README.md" in out
    assert hub.state.requests == [] and hub.state.get_repo("org/merged") is None


def test_existing_repo_needs_overwrite_or_pr(hub, out_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    hub.state.add_repo("org/merged", {"README.md": b"old card", "stale.txt": b"old"})
    before = hub.state.get_repo("org/merged").branches["main"]
    with pytest.raises(RepoNotEmptyError, match=r"org/merged already holds 2 file\(s\) "
                                                r"\(README.md, stale.txt\); pass --overwrite"):
        push_folder(out_dir, "org/merged")
    assert hub.state.get_repo("org/merged").branches["main"] == before
    assert hub.state.commit_posts == []

    pr = push_folder(out_dir, "org/merged", create_pr=True)
    assert pr.pr_url and pr.pr_url.endswith("/org/merged/discussions/1")
    repo = hub.state.get_repo("org/merged")
    assert repo.branches["main"] == before and repo.resolve("refs/pr/1").oid == pr.commit_oid

    result = push_folder(out_dir, "org/merged", overwrite=True)
    assert result.deleted == ["stale.txt"]
    head = hub.state.get_repo("org/merged").resolve("main")
    assert "stale.txt" not in head.files and head.files["README.md"].data.startswith(b"---")
    assert len(hub.state.commit_posts) == 2 and not result.created_repo


def test_private_push_and_cli(hub, out_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    assert main(["push", str(out_dir), "org/secret-merge", "--private", "--message", "v1"]) == 0
    out = capsys.readouterr().out
    assert "pushed 7 file(s) to org/secret-merge in one commit" in out
    repo = hub.state.get_repo("org/secret-merge")
    assert repo.private and repo.resolve("main").title == "v1"
    assert WRITE_TOKEN not in out


def test_push_refusals(hub, out_dir, tmp_path, monkeypatch):
    with pytest.raises(HubAccessError, match="pushing needs a Hub token with write access; none "
                                             "was found: set the HF_TOKEN"):
        push_folder(out_dir, "org/merged")
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    (out_dir / "README.md").unlink()
    with pytest.raises(ModelNotFoundError, match="no README.md model card"):
        push_folder(out_dir, "org/merged")
    with pytest.raises(ModelNotFoundError, match="not a repo ID"):
        push_folder(out_dir, "no-namespace")
    with pytest.raises(HubAccessError, match=r"HTTP 403"):
        push_folder(out_dir, "someone-else/merged", require_card=False)
    assert hub.state.commit_posts == []


def test_failed_upload_leaves_no_repo_and_no_commit(hub, out_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    hub.state.add_fault(r"^/lfs-upload/", status=500)
    with pytest.raises(HubUnavailableError, match=r"org/merged: the Hub at .* answered HTTP 500 "
                                                  r"\(a server error\) \(committing: Error while "
                                                  r"uploading '.*' to the Hub.\)"):
        push_folder(out_dir, "org/merged")
    assert hub.state.get_repo("org/merged") is None  # the empty repo was removed again
    assert hub.state.commit_posts == []
