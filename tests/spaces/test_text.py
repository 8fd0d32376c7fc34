"""The classifier tab on a text zoo (text-styles, tiny): sentences in, probabilities out."""

from __future__ import annotations

import pytest

from mergezoo.errors import SpaceInputError


@pytest.fixture(scope="module")
def text_app(space_cache):
    from mergezoo.eval import build_zoo, get_benchmark
    from mergezoo.spaces.app import SpaceApp
    from mergezoo.spaces.playground import Playground

    bench = get_benchmark("text-styles", size="tiny")
    return SpaceApp([Playground.from_zoo(build_zoo(bench, workers=2), bench)])


def test_text_classification_side_by_side(text_app):
    (pg,) = text_app.playgrounds.values()
    task = pg.handler.tasks[0]
    cell = next(c.name for c in pg.bench.cells if c.factors["task"] == task)
    sentence = text_app.example(pg.name, cell)
    assert isinstance(sentence, str) and sentence
    state, _ = text_app.merge(pg.name, pg.expert_labels, "task_arithmetic", {"lambda": 0.0}, 0)
    label, table = text_app.classify(state, pg.name, sentence, pg.expert_labels, task)
    rows = {row[0]: row for row in table["data"]}
    assert list(rows) == ["merge", "base", *pg.expert_labels]
    assert rows["merge"][2:] == rows["base"][2:]  # lambda 0: the merge is the base
    assert sum(label.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(SpaceInputError, match="500"):
        text_app.classify(state, pg.name, "word " * 200, [], task)
    with pytest.raises(SpaceInputError, match="no text"):
        text_app.classify(state, pg.name, "   ", [], task)
    with pytest.raises(SpaceInputError, match="task 'weather'"):
        text_app.classify(state, pg.name, sentence, [], "weather")
