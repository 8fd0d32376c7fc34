"""The app's functions through gradio_client against the app launched on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageChops


def _merge(client, zoo, experts, method, params, seed=0):
    return client.predict(zoo, experts, method, json.dumps(params), seed,
                          api_name="/merge_params")


def _rows(table):
    return {row[0]: row for row in table["data"]}


def _classify(client, zoo, image, experts):
    label, table = client.predict(zoo, handle_file(image), "", None, experts,
                                  api_name="/classify")
    return label, table


def test_classify_merge_beside_base_and_experts(client, tiny_playgrounds):
    pg = tiny_playgrounds[0]
    experts = pg.expert_labels[:3]
    example, _ = client.predict(pg.name, pg.bench.held_in_cells[1].name, api_name="/example")

    # lambda 0: the merge IS the base, so its probabilities are the base's
    status = _merge(client, pg.name, experts, "task_arithmetic", {"lambda": 0.0})
    assert "task_arithmetic(lambda=0)" in status and "s merge" in status
    label, table = _classify(client, pg.name, example, experts)
    rows = _rows(table)
    assert list(rows) == ["merge", "base", *experts]
    assert table["headers"][:2] == ["model", "top"] and len(table["headers"]) == 12
    for row in rows.values():
        assert sum(row[2:]) == pytest.approx(1.0, abs=2e-3)
    assert rows["merge"][2:] == rows["base"][2:]
    assert label["label"] == rows["merge"][1]

    # lambda 1: the merge moves away from the base
    _merge(client, pg.name, experts, "task_arithmetic", {"lambda": 1.0})
    _, table = _classify(client, pg.name, example, experts)
    rows = _rows(table)
    assert rows["merge"][2:] != rows["base"][2:]


def test_ui_sliders_change_the_merge(client, space_url, tiny_playgrounds):
    """The page's own /merge endpoint (every method's controls): two density values of TIES
    give two different merges, and different classifier outputs."""
    app = space_url[1].space_app
    pg = tiny_playgrounds[0]
    example, _ = client.predict(pg.name, pg.bench.held_in_cells[0].name, api_name="/example")

    def values(density):
        return [density if (c.method, c.name) == ("ties", "density") else c.value
                for c in app.all_controls]

    outputs = []
    for density in (0.05, 0.9):
        status = client.predict(pg.name, pg.expert_labels, "ties", 0, *values(density),
                                api_name="/merge")
        assert f"density={density:g}" in status
        outputs.append(_rows(_classify(client, pg.name, example, pg.expert_labels)[1])["merge"])
    assert outputs[0][2:] != outputs[1][2:]


def test_generate_merge_beside_experts(client, tiny_playgrounds):
    pg = tiny_playgrounds[1]
    experts = pg.expert_labels
    status = _merge(client, pg.name, experts, "ties", {"density": 0.5, "lambda": 1.0})
    assert "ties(density=0.5, lambda=1)" in status
    style = pg.handler.styles[1]
    first = client.predict(pg.name, 3, style, 7, 2, experts, api_name="/generate")
    captions = [item["caption"] for item in first]
    assert captions == ["merge"] * 2 + ["base"] * 2 + [e for e in experts for _ in range(2)]
    images = [Image.open(item["image"]).convert("L") for item in first]
    assert all(img.size == (96, 96) for img in images)
    assert ImageChops.difference(images[0], images[2]).getbbox() is not None  # merge != base
    again = client.predict(pg.name, 3, style, 7, 2, experts, api_name="/generate")
    same = Image.open(again[0]["image"]).convert("L")
    assert ImageChops.difference(images[0], same).getbbox() is None  # same seed, same image

    # another lambda gives other images for the same seed
    _merge(client, pg.name, experts, "ties", {"density": 0.5, "lambda": 0.1})
    other = client.predict(pg.name, 3, style, 7, 2, experts, api_name="/generate")
    assert ImageChops.difference(images[0], Image.open(other[0]["image"]).convert("L")).getbbox()


@pytest.mark.parametrize("call, message", [
    (lambda c, z, e, tmp: _merge(c, z[0], e, "ties", {"density": 5}), "density=5 is outside"),
    (lambda c, z, e, tmp: _merge(c, z[0], e, "ties", {"colour": 1}), "no hyperparameter 'colour'"),
    (lambda c, z, e, tmp: c.predict(z[0], e, "ties", "{not json", 0, api_name="/merge_params"),
     "not valid JSON"),
    (lambda c, z, e, tmp: _merge(c, z[0], [], "ties", {}), "at least one expert"),
    (lambda c, z, e, tmp: _merge(c, z[0], e, "slerp", {"t": 0.5}), "slerp"),
    (lambda c, z, e, tmp: c.predict(z[0], handle_file(tmp["text"]), "", None, e,
                                    api_name="/classify"), "not an image file"),
    (lambda c, z, e, tmp: c.predict(z[0], handle_file(tmp["fake_png"]), "", None, e,
                                    api_name="/classify"), "cannot be read as an image"),
    (lambda c, z, e, tmp: c.predict(z[1], 3, "plain", 0, 99, [], api_name="/generate"),
     "Value 99 is greater than maximum value 8"),  # the slider's own range check
    (lambda c, z, e, tmp: c.predict(z[1], 3, "plain", -4, 2, [], api_name="/generate"),
     "Value -4 is less than minimum value 0"),
    (lambda c, z, e, tmp: c.predict(z[0], 3, "plain", 0, 2, [], api_name="/generate"),
     "holds classifiers"),
])
def test_bad_inputs_are_errors_on_the_page(client, tiny_playgrounds, tmp_path, call, message):
    zoos = [pg.name for pg in tiny_playgrounds]
    experts = tiny_playgrounds[0].expert_labels
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(AppError) as err:
        call(client, zoos, experts, {"text": str(text), "fake_png": str(fake)})
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_results_tab_reads_a_bench_run(tmp_path, tiny_playgrounds):
    """The Results tab's table and plots from a bench output folder (results.json + plots)."""
    from mergezoo.spaces.app import SpaceApp
    from mergezoo.spaces.playground import Playground

    pg = tiny_playgrounds[0]
    run = tmp_path / "bench-out"
    (run / "plots").mkdir(parents=True)
    Image.new("L", (4, 4)).save(run / "plots" / "held_in_vs_held_out.png")
    (run / "results.json").write_text(json.dumps({
        "benchmark": "digits-domains", "size": "tiny",
        "rows": [{"kind": "baseline", "method": "base", "held_in": 0.5, "held_out": 0.4},
                 {"kind": "merge", "method": "ties", "n_models": 5, "held_in": 0.71234567,
                  "held_out": 0.5, "hyperparameters": {"density": 0.2, "lambda": 1.0}}]}))
    with_results = Playground(pg.name, pg.bench, pg.base, pg.experts, zoo=pg.zoo, results_dir=run)
    table, plots, note = SpaceApp([with_results]).results(pg.name)
    assert [r[:2] for r in table["data"]] == [["baseline", "base"], ["merge", "ties"]]
    assert table["data"][1][3] == 0.7123
    assert json.loads(table["data"][1][-1]) == {"density": 0.2, "lambda": 1.0}
    assert plots == [str(run / "plots" / "held_in_vs_held_out.png")]
    assert "digits-domains" in note


def test_score_the_current_merge_on_the_test_split(client, tiny_playgrounds):
    """/score: with lambda 0 the merge is the base, so its per-cell scores are the base's as
    `Benchmark.evaluate` gives them from the base folder."""
    pg = tiny_playgrounds[0]
    _merge(client, pg.name, pg.expert_labels, "task_arithmetic", {"lambda": 0.0})
    summary, table = client.predict(pg.name, api_name="/score")
    scores = {cell: score for cell, _, score in table["data"]}
    base = pg.bench.evaluate(pg.base, split="test")
    assert scores == {cell: round(v, 4) for cell, v in base.items()}
    held = pg.bench.summarize(base)
    assert f"held-in {held['held_in']:.3f}, held-out {held['held_out']:.3f}" in summary
    splits = {cell: split for cell, split, _ in table["data"]}
    assert {c for c, s in splits.items() if s == "held-in"} == {c.name for c in pg.bench.held_in_cells}
