"""Start the Space: from a deployed app.py's CONFIG, or from `mergezoo space`'s arguments.

Example:
    >>> demo = demo_from_config({"benchmarks": ["digits-domains"], "size": "tiny"})  # doctest: +SKIP
    >>> serve(demo, port=7860)                                                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from mergezoo.spaces.app import allowed_paths, build_app
from mergezoo.spaces.playground import Playground
from mergezoo.spaces.sources import builtin_playgrounds, hub_playgrounds


def playgrounds_from_config(config: dict[str, Any]) -> list[Playground]:
    """A deployed Space's CONFIG (see `deploy.SpaceConfig`) as playgrounds."""
    if config.get("experts"):
        return hub_playgrounds(list(config["experts"]), base=config.get("base"))
    return builtin_playgrounds(size=config.get("size") or "default",
                               benchmarks=tuple(config.get("benchmarks") or ()))


def demo_from_config(config: dict[str, Any], *, warm: bool = True) -> Any:
    """The Blocks app a deployed app.py runs."""
    return make_demo(playgrounds_from_config(config), title=config.get("title"), warm=warm)


def make_demo(playgrounds: list[Playground], *, title: str | None = None,
              warm: bool = True) -> Any:
    """Build the app; `warm` loads every model and task vector first, so the first merge on
    the page is as fast as the next ones."""
    if warm:
        for pg in playgrounds:
            pg.warm()
    publisher = _publisher()
    demo = build_app(playgrounds, title=title or "mergezoo: try merges", publisher=publisher)
    demo.mergezoo_allowed_paths = allowed_paths(playgrounds)
    return demo


def launch_options() -> dict[str, Any]:
    """`launch()` settings of every run of the app, local or on a Space: uploads at most 2 MB;
    Gradio's run history off (it would keep every call's inputs, the Publish tab's token
    among them, in the browser); no tracebacks on the page."""
    return {"max_file_size": "2mb", "run_history": False, "show_error": False}


def serve(demo: Any, *, port: int | None = None, host: str = "127.0.0.1",
          block: bool = True) -> Any:
    """Launch the app on host:port (files it may serve: the loaded bench's plots)."""
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                       allowed_paths=getattr(demo, "mergezoo_allowed_paths", None),
                       quiet=not block, **launch_options())


def _publisher() -> Any:
    """The Publish tab's logic (model cards and pushes)."""
    from mergezoo.spaces.publish import Publisher

    return Publisher()
