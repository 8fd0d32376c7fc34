"""Cards of local merges: every method, no base, odd names, results or none, model-index."""

from __future__ import annotations

import json
import re

import pytest
from huggingface_hub import ModelCard

from mergezoo.cli import main
from mergezoo.errors import ModelCardError
from mergezoo.merge import list_methods, merge_models
from mergezoo.model_cards import render_card, write_card

from .card_checks import parse_card

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def _merge(toys, method, out, **kw):
    spec = next(m for m in list_methods() if m.name == method)
    n = 2 if spec.needs.max_models == 2 else 3
    base = toys["base"] if spec.needs.base is True else None
    return merge_models(method, toys["experts"][:n], base=base, out_dir=out, progress=False, **kw)


@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_every_method_gets_a_card_that_parses(toys, method):
    out = toys["root"] / f"merged-{method}"
    _merge(toys, method, out)
    path = write_card(out)
    card, front = parse_card(path)
    assert front["tags"][:3] == ["merge", "mergezoo", method]
    assert front["library_name"] == "transformers" and card.data.library_name == "transformers"
    assert "base_model" not in front  # every input is local: nothing that names a local path
    text = path.read_text()
    provenance = json.loads((out / "mergezoo_merge.json").read_text())
    for record in provenance["models"]:  # each input weight file's hash is in the card
        assert record["sha256"]["model.safetensors"] in text
    assert provenance["output_sha256"]["model.safetensors"] in text
    assert f"mergezoo reproduce ./merged-{method}" in text
    assert str(toys["root"]) not in text and "No evaluation yet" in text
    assert not any(k.endswith("_") for k in provenance["hyperparameters"])


def test_provenance_uses_recipe_names_and_relative_local_paths(toys):
    out = toys["root"] / "out" / "ties"
    _merge(toys, "ties", out, params={"lambda": 0.7, "density": 0.5})
    provenance = json.loads((out / "mergezoo_merge.json").read_text())
    assert provenance["hyperparameters"]["lambda"] == 0.7 and "lambda_" not in provenance["hyperparameters"]
    assert provenance["base_model"]["path"] == "../../inputs/base"
    assert [m["ref"] for m in provenance["models"]] == [f"../../inputs/expert-{i}" for i in range(3)]
    recipe = (out / "mergezoo_recipe.yaml").read_text()
    assert "base_model: ../../inputs/base" in recipe and str(toys["root"]) not in recipe
    assert str(toys["root"]) not in json.dumps(provenance)


def test_card_without_base_model_and_with_an_odd_name(toys):
    out = toys["root"] / 'odd: "name" #1 - [x]'
    merge_models("average", toys["experts"][:2], out_dir=out, progress=False)
    card, front = parse_card(write_card(out))
    assert front["model_name"] == 'odd: "name" #1 - [x]'
    assert "base_model" not in front and "base_model_relation" not in front
    assert "fine-tuned from" not in str(card)
    card = render_card(out, repo_id="my-org/weird.name_v2--x")
    assert ModelCard(str(card)).data.model_name == "weird.name_v2--x"
    assert "'my-org/weird.name_v2--x'" in str(card)


def _results(cells_per_row=True, **extra):
    cells = [{"name": "g0-inv", "held_in": True, "factors": {"group": "0"}},
             {"name": "g1-rot", "held_in": True, "factors": {"group": "1"}},
             {"name": "g0-rot", "held_in": False, "factors": {"group": "0"}}]
    row = {"method": "ties", "kind": "merge", "hyperparameters": {"lambda": 1.0, "density": 0.5},
           "n_models": 3, "held_in": 0.91, "held_out": 0.62, "held_in_ci": [0.9, 0.92],
           "held_out_ci": [0.58, 0.66], "held_in_normalised": 0.64, "held_out_normalised": 0.31,
           "cost": {"merge_seconds": 0.4, "peak_bytes": 123456789, "flops": 1.2e9,
                    "tuning_evals": 11},
           "requires": {"base_model": True, "statistics": None, "labels": False}}
    if cells_per_row:
        row["per_cell"] = {"g0-rot": 0.62, "g0-inv": 0.95, "g1-rot": 0.87}
    other = dict(row, hyperparameters={"lambda": 0.5, "density": 0.2}, per_cell={"g0-inv": 0.1})
    base = {"method": "base", "kind": "baseline", "n_models": 0, "held_in": 0.5, "held_out": 0.5}
    return {"benchmark": "digits-domains", "seeds": [0, 1, 2], "metric": "accuracy",
            "cells": cells, "rows": [other, row, base], "plots": ["plots/scatter.png"],
            "environment": {"mergezoo": "0.1.0"}, **extra}


def test_results_give_model_index_per_cell_that_round_trips(toys, tmp_path):
    out = toys["root"] / "merged"
    _merge(toys, "ties", out, params={"lambda": 1.0, "density": 0.5})
    bench = tmp_path / "bench"
    (bench / "plots").mkdir(parents=True)
    (bench / "plots" / "scatter.png").write_bytes(PNG)
    (bench / "results.json").write_text(json.dumps(_results()))
    assert main(["card", str(out), "--results", str(bench / "results.json")]) == 0
    card, front = parse_card(out / "README.md")
    assert "digits-domains" in front["tags"]
    got = {(r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    # The row with this merge's hyperparameters, not the other ties row.
    assert got == {("g0-inv", "accuracy (g0-inv, held-in)"): 0.95,
                   ("g1-rot", "accuracy (g1-rot, held-in)"): 0.87,
                   ("g0-rot", "accuracy (g0-rot, held-out)"): 0.62,
                   ("held-in", "accuracy (held-in mean)"): 0.91,
                   ("held-out", "accuracy (held-out mean)"): 0.62}
    index = front["model-index"][0]["results"]
    assert [r["dataset"]["config"] for r in index] == ["g0-inv", "g1-rot", "g0-rot", "held-in",
                                                      "held-out"]
    assert all(r["metrics"][0]["type"] == "accuracy" for r in index)
    text = (out / "README.md").read_text()
    assert "0.910 [0.900, 0.920]" in text and "base (baseline)" in text
    assert '| ties (this model) | {"lambda": 1.0, "density": 0.5} |' in text
    assert "tuned on held-in validation data by `mergezoo bench` (11 evaluations" in text
    assert "peak memory: 117.7 MiB" in text and "1.2e+09" in text
    assert "- base model: yes\n- statistics: none\n- data while merging: none\n- labels: no" in text
    assert "![plots/scatter.png](plots/scatter.png)" in text
    assert (out / "plots" / "scatter.png").read_bytes() == PNG
    copied = json.loads((out / "results.json").read_text())
    assert copied["benchmark"] == "digits-domains" and copied["plots"] == ["plots/scatter.png"]


@pytest.mark.parametrize("results", [
    {"rows": [{"method": "ties", "held_in": 0.8}]},                      # only required fields
    {"rows": [{"method": "linear", "held_in": 0.8}]},                    # another method's alias
    {"rows": [{"method": "ties", "held_in": None, "per_cell": {"c": 0.5}}], "cells": []},
    {"rows": [{"method": "average", "held_in": 0.3}], "benchmark": "b"},  # no row of ties
    {"rows": []},
])
def test_results_with_optional_fields_absent(toys, results):
    out = toys["root"] / "merged"
    _merge(toys, "ties", out)
    card, front = parse_card(write_card(out, results))
    values = [r.metric_value for r in card.data.eval_results or []]
    row = next((r for r in results["rows"] if r["method"] == "ties"), None)
    expected = [v for v in [*(row or {}).get("per_cell", {}).values(), (row or {}).get("held_in")]
                if v is not None]
    assert values == expected
    assert ("model-index" in front) == bool(expected)


def test_bad_inputs_are_named(toys, tmp_path):
    with pytest.raises(ModelCardError, match="no mergezoo_merge.json"):
        render_card(toys["base"])
    out = toys["root"] / "merged"
    _merge(toys, "average", out)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelCardError, match=r"bad.json: not valid JSON"):
        write_card(out, tmp_path / "bad.json")
    with pytest.raises(ModelCardError, match="results row 0: every row needs a `method`"):
        write_card(out, {"rows": [{"held_in": 1}]})
    assert not (out / "README.md").exists()


def test_licenses_are_inherited_or_warned_about(toys):
    for folder, license_ in zip([toys["base"], *toys["experts"]], ["mit", "mit", "mit", "apache-2.0"]):
        (folder / "README.md").write_text(f"---\nlicense: {license_}\ndatasets: [d/{folder.name}]\n---\n")
    out = toys["root"] / "two"
    merge_models("ties", toys["experts"][:2], base=toys["base"], out_dir=out, progress=False)
    card, front = parse_card(write_card(out))
    assert front["license"] == "mit"
    assert "different licenses" not in str(card) and "is unknown" not in str(card)
    assert front["datasets"] == ["d/base", "d/expert-0", "d/expert-1"]
    out = toys["root"] / "three"
    merge_models("ties", toys["experts"], base=toys["base"], out_dir=out, progress=False)
    card, front = parse_card(write_card(out))
    assert front["license"] == "other"
    assert re.search(r"different licenses \(.*expert 3 .*: apache-2.0", str(card))


def test_out_dtype_sets_the_config_dtype(toys):
    import torch

    out = toys["root"] / "bf16"
    merge_models("average", toys["experts"][:2], out_dir=out, progress=False,
                 out_dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((toys["experts"][0] / "config.json").read_text())["dtype"] == "float32"


def test_cli_refusals_name_the_culprit(toys, capsys, monkeypatch):
    assert main(["card", str(toys["base"])]) == 2
    assert "no mergezoo_merge.json; only a folder written by `mergezoo merge`" in capsys.readouterr().err
    out = toys["root"] / "never"
    assert main(["merge", "--method", "average", str(toys["experts"][0]), str(toys["experts"][1]),
                 "--out", str(out), "--push", "no-namespace", "-q"]) == 2
    assert "'no-namespace': not a repo ID of the form namespace/name" in capsys.readouterr().err
    assert not out.exists()  # refused before merging
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("mergezoo.zoo.hub.get_token", lambda: None)  # no stored token either
    assert main(["merge", "--method", "average", str(toys["experts"][0]), str(toys["experts"][1]),
                 "--out", str(out), "--push", "org/x", "-q"]) == 2
    assert "pushing needs a Hub token with write access" in capsys.readouterr().err
    assert not out.exists()
    assert main(["reproduce", str(toys["root"] / "missing")]) == 2
    assert "no such folder, and not a Hub repo ID" in capsys.readouterr().err


def test_merge_cli_writes_the_card_inside_the_atomic_output(toys):
    out = toys["root"] / "cli"
    assert main(["merge", "--method", "task_arithmetic", "--base", str(toys["base"]),
                 *map(str, toys["experts"]), "--set", "lambda=0.3", "--out", str(out), "-q"]) == 0
    card, front = parse_card(out / "README.md")
    assert "`lambda`: 0.3" in str(card) and front["tags"][2] == "task_arithmetic"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".cli")]


def test_a_row_named_by_alias_is_the_methods_row(toys):
    out = toys["root"] / "soup"
    merge_models("average", toys["experts"][:2], out_dir=out, progress=False)
    card, _ = parse_card(write_card(out, {"rows": [{"method": "linear", "n_models": 2,
                                                    "held_in": 0.7, "held_out": 0.4}]}))
    assert [r.metric_value for r in card.data.eval_results] == [0.7, 0.4]
