"""The Gradio Blocks app: merge experts live, try the merge beside them, see a bench's results.

Tabs:
- **Merge**: the zoo, its experts, a method and its hyperparameters as sliders (ranges and
  defaults from the method registry, `spaces.controls`); "Merge" merges in memory
  (`Playground.merge`: task vectors computed once per zoo) and says how long it took.
- **Classifier**: an image (upload, or a benchmark example per cell) or a sentence in; label
  probabilities of the merge, the base and each chosen expert side by side.
- **Generator**: a digit, a style, a seed and a number of images; the merge's images beside
  the base's and each expert's for the same seed.
- **Results**: the loaded bench run's table and plots, and the current merge's held-in /
  held-out scores on the benchmark's test data.
- **Publish**: push the current merge with its model card to a repo the visitor names.

Every handler turns a `MergezooError` into a `gr.Error` (a message on the page, no traceback);
model work goes through one queue slot (`concurrency_id="models"`), so merges, classifications
and generations run one at a time, and the queue holds at most `QUEUE_SIZE` waiting requests.

Example:
    >>> demo = build_app([Playground.from_zoo(zoo)])          # doctest: +SKIP
    >>> demo.launch(server_name="127.0.0.1", server_port=7860) # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from mergezoo.errors import MergezooError, SpaceInputError
from mergezoo.merge import get_method
from mergezoo.spaces import controls as ctl
from mergezoo.spaces.handlers import IMAGE_GENERATION, TEXT_CLASSIFICATION
from mergezoo.spaces.playground import MergeSpec, Playground
from mergezoo.spaces.validate import (MAX_IMAGES, MAX_SEED, check_choice, check_image, check_int,
                                      check_text)

log = logging.getLogger(__name__)

QUEUE_SIZE = 16
MODELS = "models"  # the queue slot every model computation shares
RESULT_COLUMNS = ["kind", "method", "n_models", "held_in", "held_out", "held_in_normalised",
                  "held_out_normalised", "hyperparameters"]


def ui_errors(fn: Callable) -> Callable:
    """Show a user's mistake as a message on the page; log anything else and say so."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MergezooError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # a bug: keep the traceback in the server log, not on the page
            log.exception("the Space failed in %s", fn.__name__)
            raise gr.Error(f"{fn.__name__} failed ({type(err).__name__}); the server log has "
                           "the details", print_exception=False) from None
    return wrapper


def checked_uploads(image: gr.Image) -> gr.Image:
    """Make an image input check the upload itself (type, size, decodable) before Gradio
    converts it, so a bad file gets our message instead of a conversion error. (A subclass of
    gr.Image would do the same, but Gradio writes a .pyi stub beside every component class.)"""
    convert = image.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None and getattr(payload, "path", None):
            try:
                check_image(payload.path, name=getattr(payload, "orig_name", None))
            except SpaceInputError as err:
                raise gr.Error(str(err), print_exception=False) from None
        return convert(payload)

    image.preprocess = preprocess
    return image


def _progress(progress: Any) -> Callable[[float, str], None]:
    return lambda fraction, desc: progress(fraction, desc=desc)


class SpaceApp:
    """The app's logic over its playgrounds, one method per event (testable without a page)."""

    def __init__(self, playgrounds: list[Playground], *, publisher: Any = None) -> None:
        if not playgrounds:
            raise SpaceInputError("the Space needs at least one zoo to serve")
        self.playgrounds = {pg.name: pg for pg in playgrounds}
        if len(self.playgrounds) != len(playgrounds):
            raise SpaceInputError("two zoos have the same name")
        self.methods = playgrounds[0].methods()
        self.controls = {m: ctl.method_controls(m) for m in self.methods}
        self.publisher = publisher

    # -- lookups -----------------------------------------------------------------------------
    def playground(self, name: str) -> Playground:
        if name not in self.playgrounds:
            raise SpaceInputError(f"no zoo {name!r}; zoos: {list(self.playgrounds)}")
        return self.playgrounds[name]

    def current(self, state: dict | None, zoo: str) -> MergeSpec | None:
        """The session's merge, if it is a merge of this zoo."""
        if state and state.get("zoo") == zoo:
            return MergeSpec.from_dict(state)
        return None

    @property
    def all_controls(self) -> list[ctl.Control]:
        return [c for m in self.methods for c in self.controls[m]]

    def params_from_values(self, method: str, values: list[Any]) -> dict[str, Any]:
        """The chosen method's values out of every method's controls (the page sends all)."""
        if len(values) != len(self.all_controls):
            raise SpaceInputError(f"expected {len(self.all_controls)} control values, "
                                  f"got {len(values)}")
        return {c.name: v for c, v in zip(self.all_controls, values) if c.method == method}

    # -- events ------------------------------------------------------------------------------
    def merge(self, zoo: str, experts: list[str], method: str, params: dict[str, Any], seed: Any,
              progress: Callable[[float, str], None] | None = None) -> tuple[dict, str]:
        pg = self.playground(zoo)
        check_choice(method, "method", self.methods)
        params = ctl.check_params(method, params)
        seed = check_int(seed, "seed", 0, MAX_SEED)
        outcome = pg.merge(MergeSpec(list(experts or []), method, params, seed), progress)
        state = {"zoo": zoo, **outcome.spec.to_dict()}
        first = (f" (the task vectors took {outcome.task_vector_seconds:.2f} s, once)"
                 if outcome.task_vector_seconds else "")
        status = (f"**Merged** {outcome.spec.describe()}: {outcome.merge_seconds:.3f} s merge + "
                  f"{outcome.load_seconds:.3f} s loading the weights{first}.")
        return state, status

    def classify(self, state: dict | None, zoo: str, value: Any, experts: list[str],
                 task: str | None = None) -> tuple[dict[str, float], list[list[Any]]]:
        pg = self.playground(zoo)
        if pg.kind == IMAGE_GENERATION:
            raise SpaceInputError(f"{zoo} holds generators; use the Generator tab")
        if pg.kind == TEXT_CLASSIFICATION:
            value = check_text(value)
        else:
            value = check_image(value)
        rows = pg.classify(self.current(state, zoo), value, task=task, experts=list(experts or []))
        merge_or_first = rows[0][1]
        classes = list(merge_or_first)
        table = [[name, max(probs, key=probs.get)] + [round(probs[c], 4) for c in classes]
                 for name, probs in rows]
        return merge_or_first, {"headers": ["model", "top"] + classes, "data": table}

    def example(self, zoo: str, cell: str) -> Any:
        pg = self.playground(zoo)
        found = dict(pg.examples())
        if cell not in found:
            raise SpaceInputError(f"{zoo} has no example for cell {cell!r}")
        return found[cell]

    def generate(self, state: dict | None, zoo: str, digit: Any, style: str, seed: Any, n: Any,
                 experts: list[str]) -> list[tuple[Any, str]]:
        pg = self.playground(zoo)
        if pg.kind != IMAGE_GENERATION:
            raise SpaceInputError(f"{zoo} holds classifiers; use the Classifier tab")
        digit = check_int(digit, "digit", 0, 9)
        seed = check_int(seed, "seed", 0, MAX_SEED)
        n = check_int(n, "number of images", 1, MAX_IMAGES)
        rows = pg.generate(self.current(state, zoo), digit, style, seed, n,
                           experts=list(experts or []))
        return [(img, name) for name, images in rows for img in images]

    def evaluate(self, state: dict | None, zoo: str,
                 progress: Callable[[float, str], None] | None = None) -> tuple[str, dict]:
        pg = self.playground(zoo)
        spec = self.current(state, zoo)
        if spec is None:
            raise SpaceInputError("merge first: there is no merge of this zoo to score yet")
        scores = pg.evaluate(spec, progress=progress)
        held_in = set(scores["held_in_cells"])
        summary = (f"**{spec.describe()}** on the test split: held-in "
                   f"{scores['held_in']:.3f}, held-out {scores['held_out']:.3f}")
        rows = [[cell, "held-in" if cell in held_in else "held-out", round(v, 4)]
                for cell, v in scores["per_cell"].items()]
        return summary, {"headers": ["cell", "split", "score"], "data": rows}

    def results(self, zoo: str) -> tuple[dict, list[str], str]:
        """The loaded bench run's rows, plots and report, or empty ones."""
        pg = self.playground(zoo)
        results = pg.results()
        if results is None:
            return ({"headers": RESULT_COLUMNS, "data": []}, [],
                    "No bench results loaded (start with `mergezoo space --results DIR`).")
        rows = []
        for row in results["rows"]:
            cells = []
            for col in RESULT_COLUMNS:
                value = row.get(col)
                if isinstance(value, float):
                    value = round(value, 4)
                elif isinstance(value, dict):
                    value = json.dumps(value, sort_keys=True)
                cells.append("" if value is None else value)
            rows.append(cells)
        plots = sorted(str(p) for p in (pg.results_dir / "plots").glob("*.png"))
        note = (f"Bench run of **{results['benchmark']}** ({results.get('size')}), "
                f"{len(results['rows'])} rows, from `{pg.results_dir}`.")
        return {"headers": RESULT_COLUMNS, "data": rows}, plots, note

    def zoo_view(self, zoo: str) -> dict[str, Any]:
        """What the page shows for a zoo: its experts, examples, tasks or styles."""
        pg = self.playground(zoo)
        return {"experts": pg.expert_labels, "kind": pg.kind,
                "examples": [cell for cell, _ in pg.examples()],
                "tasks": getattr(pg.handler, "tasks", []),
                "styles": getattr(pg.handler, "styles", [])}


def build_app(playgrounds: list[Playground], *, title: str = "mergezoo: try merges",
              publisher: Any = None) -> gr.Blocks:
    """The Blocks app over `playgrounds` (queue configured; call `.launch()`)."""
    app = SpaceApp(playgrounds, publisher=publisher)
    first = playgrounds[0]
    view = app.zoo_view(first.name)
    kinds = {pg.kind for pg in playgrounds}
    # every zoo's tasks and styles are choices (a dropdown refuses values outside its choices)
    all_tasks = sorted({t for pg in playgrounds for t in app.zoo_view(pg.name)["tasks"]})
    all_styles = list(dict.fromkeys(s for pg in playgrounds for s in app.zoo_view(pg.name)["styles"]))

    with gr.Blocks(title=title) as demo:
        demo.space_app = app  # for tests and the deployed app.py
        gr.Markdown(f"# {title}\nPick experts and a merge method, move the sliders, press "
                    "**Merge**, then try the merged model beside its experts.")
        state = gr.State(None)
        zoo = gr.Dropdown(list(app.playgrounds), value=first.name, label="zoo",
                          visible=len(app.playgrounds) > 1)
        with gr.Tab("Merge"):
            experts = gr.CheckboxGroup(view["experts"], value=first.default_experts,
                                       label="experts to merge (and to compare with)")
            method = gr.Dropdown(app.methods, value="ties" if "ties" in app.methods
                                 else app.methods[0], label="method")
            columns, widgets = {}, []
            for m in app.methods:
                with gr.Column(visible=m == method.value) as col:
                    spec = get_method(m)
                    gr.Markdown(f"`{m}`: {spec.summary} [paper]({spec.paper})")
                    for c in app.controls[m]:
                        widgets.append(_widget(c))
                columns[m] = col
            seed = gr.Number(0, label="seed (random methods: DARE)", precision=0, minimum=0,
                             maximum=MAX_SEED)
            merge_btn = gr.Button("Merge", variant="primary")
            status = gr.Markdown("No merge yet.", elem_id="merge-status")
            params_json = gr.Textbox(visible=False)  # the API's way to send hyperparameters
            merge_api_btn = gr.Button(visible=False)

        with gr.Tab("Classifier", visible=bool(kinds - {IMAGE_GENERATION})):
            with gr.Row():
                with gr.Column():
                    image = checked_uploads(gr.Image(
                        type="filepath", format="png", label="image", height=192,
                        elem_id="input-image", image_mode="L", sources=["upload", "clipboard"],
                        visible=view["kind"] != TEXT_CLASSIFICATION))
                    text = gr.Textbox(label="text", max_length=500, lines=2,
                                      visible=view["kind"] == TEXT_CLASSIFICATION)
                    task = gr.Dropdown(all_tasks, value=(view["tasks"] or all_tasks or [None])[0],
                                       label="task (label set)",
                                       visible=view["kind"] == TEXT_CLASSIFICATION)
                    example = gr.Dropdown(view["examples"], value=None,
                                          label="or an example of a cell (test split)",
                                          elem_id="example")
                    classify_btn = gr.Button("Classify", variant="primary")
                with gr.Column():
                    merged_label = gr.Label(num_top_classes=3, label="the merge (or the base)",
                                            elem_id="merged-label")
            probs = gr.Dataframe(label="label probabilities: the merge, the base, each expert",
                                 elem_id="probabilities", interactive=False)

        with gr.Tab("Generator", visible=IMAGE_GENERATION in kinds):
            with gr.Row():
                digit = gr.Slider(0, 9, value=3, step=1, label="digit")
                style = gr.Dropdown(all_styles, value=(view["styles"] or all_styles or [None])[-1],
                                    label="style")
                gen_seed = gr.Number(0, label="seed", precision=0, minimum=0, maximum=MAX_SEED)
                n_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="images per model")
            generate_btn = gr.Button("Generate", variant="primary")
            gallery = gr.Gallery(label="the merge, the base and each expert (same seed)",
                                 columns=4, height="auto", format="png", elem_id="generations")

        with gr.Tab("Results"):
            results_note = gr.Markdown()
            results_table = gr.Dataframe(label="bench results", interactive=False)
            plots = gr.Gallery(label="plots", columns=3, height="auto")
            score_btn = gr.Button("Score the current merge on the test split")
            score_note = gr.Markdown()
            scores = gr.Dataframe(label="current merge, per cell", interactive=False)

        if publisher is not None:
            publisher.build_tab(app, state, zoo)

        # -- wiring ------------------------------------------------------------------------
        def on_method(m: str) -> list[Any]:
            return [gr.update(visible=name == m) for name in columns]

        method.change(on_method, method, list(columns.values()), api_visibility="private",
                      queue=False)

        @ui_errors
        def merge_ui(zoo_name, chosen, m, seed_value, *values, progress=gr.Progress()):
            return app.merge(zoo_name, chosen, m, app.params_from_values(m, list(values)),
                             seed_value, _progress(progress))

        @ui_errors
        def merge_params(zoo_name, chosen, m, params_text, seed_value, progress=gr.Progress()):
            """Merge with hyperparameters given as a JSON object ({"density": 0.2, ...})."""
            try:
                params = json.loads(params_text or "{}")
            except json.JSONDecodeError as err:
                raise SpaceInputError(f"hyperparameters are not valid JSON: {err}") from None
            if not isinstance(params, dict):
                raise SpaceInputError("hyperparameters must be a JSON object")
            return app.merge(zoo_name, chosen, m, params, seed_value, _progress(progress))

        merge_btn.click(merge_ui, [zoo, experts, method, seed, *widgets], [state, status],
                        api_name="merge", concurrency_id=MODELS, concurrency_limit=1)
        merge_api_btn.click(merge_params, [zoo, experts, method, params_json, seed],
                            [state, status], api_name="merge_params", concurrency_id=MODELS)

        @ui_errors
        def classify(st, zoo_name, image_path, sentence, task_name, chosen):
            pg = app.playground(zoo_name)
            value = sentence if pg.kind == TEXT_CLASSIFICATION else image_path
            return app.classify(st, zoo_name, value, chosen, task_name)

        classify_btn.click(classify, [state, zoo, image, text, task, experts],
                           [merged_label, probs], api_name="classify", concurrency_id=MODELS)

        @ui_errors
        def load_example(zoo_name, cell):
            if not cell:
                return gr.update(), gr.update()
            value = app.example(zoo_name, cell)
            if app.playground(zoo_name).kind == TEXT_CLASSIFICATION:
                return gr.update(), value
            return value, gr.update()

        example.change(load_example, [zoo, example], [image, text], api_name="example")

        @ui_errors
        def generate(st, zoo_name, d, s, sd, n, chosen):
            return app.generate(st, zoo_name, d, s, sd, n, chosen)

        generate_btn.click(generate, [state, zoo, digit, style, gen_seed, n_images, experts],
                           gallery, api_name="generate", concurrency_id=MODELS)

        @ui_errors
        def score(st, zoo_name, progress=gr.Progress()):
            return app.evaluate(st, zoo_name, _progress(progress))

        score_btn.click(score, [state, zoo], [score_note, scores], api_name="score",
                        concurrency_id=MODELS)

        @ui_errors
        def show_results(zoo_name):
            table, images, note = app.results(zoo_name)
            return note, table, images

        @ui_errors
        def on_zoo(zoo_name):
            v = app.zoo_view(zoo_name)
            pg = app.playground(zoo_name)
            is_text = v["kind"] == TEXT_CLASSIFICATION
            return (gr.update(choices=v["experts"], value=pg.default_experts),
                    gr.update(choices=v["examples"], value=None),
                    gr.update(visible=not is_text), gr.update(visible=is_text),
                    gr.update(value=(v["tasks"] or [task.value])[0], visible=is_text),
                    gr.update(value=(v["styles"] or [style.value])[-1]),
                    *show_results(zoo_name))

        zoo.change(on_zoo, zoo, [experts, example, image, text, task, style, results_note,
                                 results_table, plots], api_visibility="private")
        demo.load(show_results, zoo, [results_note, results_table, plots],
                  api_visibility="private")
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def _widget(c: ctl.Control) -> gr.components.Component:
    common = {"label": c.label, "info": c.info or None, "elem_id": f"hp-{c.method}-{c.name}"}
    if c.kind == "slider":
        return gr.Slider(c.minimum, c.maximum, value=c.value, step=c.step, **common)
    if c.kind == "checkbox":
        return gr.Checkbox(value=c.value, **common)
    return gr.Dropdown(list(c.choices), value=c.value, **common)


def allowed_paths(playgrounds: list[Playground]) -> list[str]:
    """Folders the page may serve files from (bench plots)."""
    return [str(Path(pg.results_dir).resolve()) for pg in playgrounds if pg.results_dir]
