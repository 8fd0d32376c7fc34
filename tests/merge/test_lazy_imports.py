"""Listing the merge methods imports no torch: `mergezoo methods` answers in a fraction of a
second, and the registry and the method definitions import torch only where the maths runs."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import io, json, runpy, sys, contextlib
sys.argv = ["mergezoo"] + {argv!r}
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        runpy.run_module("mergezoo.cli", run_name="__main__")
    except SystemExit as exit:
        assert not exit.code, exit.code
print(json.dumps({{"torch": "torch" in sys.modules, "out": out.getvalue()}}))
"""


def _python(script: str) -> str:
    """The standard output of `script` run by a fresh interpreter (which must succeed)."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True).stdout


def _run(argv: list[str]) -> dict:
    return json.loads(_python(SCRIPT.format(argv=argv)).strip().splitlines()[-1])


def test_mergezoo_methods_lists_every_method_without_importing_torch():
    table = _run(["methods"])
    assert not table["torch"]
    assert "ties" in table["out"] and "model_stock" in table["out"]
    listing = _run(["methods", "--json"])
    assert not listing["torch"]
    ties = next(m for m in json.loads(listing["out"]) if m["name"] == "ties")
    assert ties["hyperparameters"]["sign_rule"]["choices"] == ["sum", "count"]
    assert ties["hyperparameters"]["density"]["per_model"] is True


def test_looking_up_a_method_imports_no_torch_until_it_merges():
    script = ("import sys; from mergezoo.merge import get_method; m = get_method('dare_ties'); "
              "assert m.summary and m.hyperparameters['density'].per_model; "
              "assert 'torch' not in sys.modules; import torch; from mergezoo.merge.spec import MergeInputs; "
              "x = MergeInputs(key='w', base=torch.zeros(4), models=[torch.ones(4)] * 2, "
              "seeds=[1, 2]); print(m.fn(x, **m.resolve({}, [], 2)).tolist())")
    assert _python(script).strip() == "[2.0, 2.0, 2.0, 2.0]"  # density 1, no normalize: the sum


def test_checking_a_dare_or_della_recipe_imports_no_torch():
    """A recipe's hyperparameters are checked (the draws' resolution included) before torch
    is needed; a density the draws cannot resolve is refused by name."""
    script = ("import sys; from mergezoo.merge import get_method; "
              "from mergezoo.errors import HyperparameterError; "
              "get_method('dare_ties').resolve({'density': 0.3}, [], 2); "
              "get_method('della').resolve({'density': 0.3, 'epsilon': 0.1}, [], 2)\n"
              "try:\n get_method('dare_linear').resolve({'density': 1e-7}, [], 2)\n"
              "except HyperparameterError as err:\n print(err)\n"
              "assert 'torch' not in sys.modules")
    assert "below what the random drop resolves" in _python(script)
