"""BenchmarkSpec: grid cells, validation errors that name the culprit, YAML round trip, hash."""

import pytest

from mergezoo.errors import BenchmarkDefinitionError
from mergezoo.eval.spec import BenchmarkSpec, Cell, grid_cells

FACTORS = {"group": ["g0", "g1"], "domain": ["plain", "inverted", "rotated"]}


def make_spec(**kw):
    return BenchmarkSpec(name="toy", factors=FACTORS,
                         cells=grid_cells(FACTORS, ["g0-inverted", "g1-rotated"]), **kw)


def test_grid_cells_names_order_and_held_in():
    cells = grid_cells(FACTORS, ["g0-inverted"])
    assert [c.name for c in cells] == ["g0-plain", "g0-inverted", "g0-rotated",
                                       "g1-plain", "g1-inverted", "g1-rotated"]
    assert [c.name for c in cells if c.held_in] == ["g0-inverted"]
    assert cells[1].factors == {"group": "g0", "domain": "inverted"}
    assert cells[1].tag == "cell:g0-inverted"


def test_grid_cells_custom_name_format():
    cells = grid_cells(FACTORS, [], fmt="{domain}_{group}")
    assert cells[0].name == "plain_g0"


def test_unknown_held_in_cell_is_named():
    with pytest.raises(BenchmarkDefinitionError, match="g9-plain"):
        grid_cells(FACTORS, ["g9-plain"])


def test_yaml_round_trip_is_exact():
    spec = make_spec(metric="accuracy", params={"lr": 0.001, "nested": {"a": [1, 2]}}, size="tiny",
                     experts={"g0-inverted": ["org/a", "org/b"]})
    again = BenchmarkSpec.from_yaml(spec.to_yaml())
    assert again == spec
    assert again.definition_hash() == spec.definition_hash()


def test_hash_changes_with_definition():
    assert make_spec().definition_hash() != make_spec(params={"lr": 0.1}).definition_hash()
    assert make_spec().definition_hash() != make_spec(version=2).definition_hash()


def test_from_dict_grid_with_held_in_list_and_cell_name():
    spec = BenchmarkSpec.from_dict({"name": "t", "factors": FACTORS, "cell_name": "{group}/{domain}",
                                    "held_in": ["g1/plain"]})
    assert [c.name for c in spec.held_in_cells] == ["g1/plain"]
    assert len(spec.held_out_cells) == 5


@pytest.mark.parametrize("raw, culprit", [
    ({"name": "t", "factors": FACTORS, "colour": 1}, "colour"),
    ({"factors": FACTORS}, "name"),
    ({"name": "t", "factors": FACTORS, "cells": [{"group": "g0"}]}, "domain"),
    ({"name": "t", "factors": FACTORS, "cells": [{"group": "g7", "domain": "plain"}]}, "g7"),
    ({"name": "t", "factors": FACTORS, "held_in": ["g0-plain"],
      "experts": {"g1-plain": ["org/x"]}}, "held-out cell 'g1-plain'"),
    ({"name": "t", "factors": FACTORS, "experts": {"nope": ["org/x"]}}, "nope"),
])
def test_bad_definitions_name_the_culprit(raw, culprit):
    with pytest.raises(BenchmarkDefinitionError, match=culprit):
        BenchmarkSpec.from_dict(raw)


def test_duplicate_cell_rejected():
    with pytest.raises(BenchmarkDefinitionError, match="twice"):
        BenchmarkSpec(name="t", factors=FACTORS,
                      cells=[Cell("a", {"group": "g0", "domain": "plain"}),
                             Cell("a", {"group": "g1", "domain": "plain"})])


def test_cell_lookup_error_lists_cells():
    with pytest.raises(BenchmarkDefinitionError, match="g0-plain"):
        make_spec().cell("missing")
