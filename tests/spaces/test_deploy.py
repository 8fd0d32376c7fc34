"""Deploying the Space against the Hub test server, and the deployed app.py starting alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gradio
import pytest
from huggingface_hub import HfApi, SpaceCard, hf_hub_download
from packaging.requirements import Requirement

from mergezoo.cli import main
from mergezoo.errors import HubAccessError, RepoNotEmptyError, SpaceInputError
from mergezoo.spaces.deploy import SpaceConfig, deploy_space, write_space
from zoo.conftest import WRITE_TOKEN

ROOT = Path(__file__).resolve().parents[2]
FILES = ["README.md", "app.py", "requirements.txt"]


def _space_files(repo_id: str) -> dict[str, str]:
    return {name: Path(hf_hub_download(repo_id, name, repo_type="space")).read_text()
            for name in FILES}


def test_deploy_creates_a_gradio_space_in_one_commit(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    code = main(["space", "--deploy", "org/try-merges", "--size", "tiny", "--private"])
    assert code == 0
    out = capsys.readouterr()
    assert "org/try-merges" in out.out and WRITE_TOKEN not in out.out + out.err

    posts = [p for p in hub.state.commit_posts if p["repo"] == "org/try-merges"]
    assert len(posts) == 1  # ONE commit with the three files
    assert sorted(path for op, path in posts[0]["operations"] if op == "file") == FILES
    info = HfApi().space_info("org/try-merges")
    assert info.private
    files = _space_files("org/try-merges")

    card = SpaceCard(files["README.md"])
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.sdk_version == gradio.__version__
    assert card.data.title and card.data.license == "apache-2.0"
    assert "'size': 'tiny'" in files["app.py"] and "demo_from_config(CONFIG)" in files["app.py"]
    requirements = [Requirement(line) for line in files["requirements.txt"].splitlines()
                    if line and not line.startswith(("#", "-"))]
    assert [r.name for r in requirements] == ["mergezoo"]
    for name, text in files.items():
        assert WRITE_TOKEN not in text, name
        assert "hf_" not in text, name


def test_deploy_with_hub_experts_lists_them_in_the_card(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    config = SpaceConfig(experts=["org/expert-a", "org/expert-b"], base="org/base")
    result = deploy_space("org/hub-experts", config, package="mergezoo @ git+https://example.org/m")
    assert result.files == FILES
    files = _space_files("org/hub-experts")
    assert SpaceCard(files["README.md"]).data.models == ["org/expert-a", "org/expert-b", "org/base"]
    assert "mergezoo @ git+https://example.org/m" in files["requirements.txt"]
    # a second deploy needs --overwrite
    with pytest.raises(RepoNotEmptyError):
        deploy_space("org/hub-experts", config)
    deploy_space("org/hub-experts", config, overwrite=True)


def test_deploy_refusals(hub, monkeypatch, capsys):
    with pytest.raises(HubAccessError, match="token"):
        deploy_space("org/no-token", SpaceConfig())
    assert main(["space", "--deploy", "org/x", "--zoo", "somewhere"]) == 2
    assert "local --zoo" in capsys.readouterr().err
    with pytest.raises(SpaceInputError):
        SpaceConfig(benchmarks=[])


def test_deployed_app_py_builds_the_blocks(tmp_path, tiny_playgrounds, space_cache):
    """app.py alone, run as a Space runs it but without launching: it imports mergezoo,
    builds the zoos it names (cached here) and the Blocks app."""
    folder = write_space(tmp_path / "space", SpaceConfig(benchmarks=["digits-domains"],
                                                          size="tiny"))
    check = ("import runpy, gradio; ns = runpy.run_path('app.py'); demo = ns['demo']; "
             "assert isinstance(demo, gradio.Blocks); "
             "print(sorted(demo.space_app.playgrounds), demo.space_app.methods[:2])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MERGEZOO_CACHE": str(space_cache)}
    env.pop("HF_TOKEN", None)
    done = subprocess.run([sys.executable, "-c", check], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "['digits-domains (tiny)'] ['average', 'breadcrumbs']" in done.stdout
