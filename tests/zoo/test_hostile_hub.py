"""Hub repos as a hostile publisher would make them (issue 13): file names with `../`."""

from __future__ import annotations

import pytest

from mergezoo.cli import main
from mergezoo.errors import UnsafePathError
from mergezoo.zoo.pull import pull_model


def test_a_hub_file_name_with_dotdot_is_refused_naming_it(hub, tiny, tmp_path):
    files = {p.name: p.read_bytes() for p in tiny.llama_experts[0].iterdir() if p.is_file()}
    files["../../evil.json"] = b"{}"
    hub.state.add_repo("org/evil", files)
    with pytest.raises(UnsafePathError, match=r"org/evil: a file name in the repo = "
                       r"'\.\./\.\./evil.json' leaves the model folder"):
        pull_model("org/evil")
    assert main(["pull", "org/evil"]) == 2
