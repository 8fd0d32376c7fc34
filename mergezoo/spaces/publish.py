"""The Publish tab: push the session's merge, with its model card, to a repo the visitor names.

The merge is written by the streaming engine (`Playground.save_merge`: the same method,
hyperparameters and seed as the in-memory merge, plus recipe and provenance), its card by
`mergezoo.model_cards.write_card` (with the loaded bench's results when there are some), and
the folder goes to the Hub in one commit (`mergezoo.zoo.push.push_folder`). The visitor's
token is used for that push only: it is not stored, logged, written or shown (error messages
pass through `zoo.hub.redact`), and the app runs with Gradio's run history off, so the browser
does not keep it either.

Example:
    >>> Publisher().publish(app, state, "digits-domains (tiny)", "me/ties-digits",
    ...                     token, private=True)                         # doctest: +SKIP
    'Pushed ... in one commit: https://huggingface.co/me/ties-digits/commit/...'
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mergezoo.errors import MergezooError, SpaceInputError
from mergezoo.model_cards import write_card
from mergezoo.zoo.hub import redact
from mergezoo.zoo.push import check_repo_id, push_folder


class Publisher:
    """Pushes merges for the app (`build_tab` adds the tab to the page)."""

    def publish(self, app: Any, state: dict | None, zoo: str, repo_id: str, token: str | None,
                private: bool = False) -> str:
        repo_id = (repo_id or "").strip()
        check_repo_id(repo_id)
        token = (token or "").strip() or None
        if token is None:
            raise SpaceInputError("give a Hub token with write access (it is used for this push "
                                  "only, never stored)")
        pg = app.playground(zoo)
        spec = app.current(state, zoo)
        if spec is None:
            raise SpaceInputError("merge first: there is no merge of this zoo to publish")
        results = pg.results_dir / "results.json" if pg.results_dir else None
        try:
            with tempfile.TemporaryDirectory(prefix="mergezoo-publish-") as tmp:
                folder = Path(tmp) / repo_id.split("/")[-1]
                pg.save_merge(spec, folder, finalize=lambda out: write_card(
                    out, results, repo_id=repo_id))
                pushed = push_folder(folder, repo_id, private=private, token=token,
                                     commit_message=f"Upload {spec.describe()} from the "
                                                    "mergezoo Space")
        except MergezooError as err:
            raise type(err)(redact(str(err), token)) from None
        return (f"**Pushed** {spec.describe()} with its model card to `{pushed.repo_id}` in one "
                f"commit ({len(pushed.files)} files): {pushed.commit_url}")

    def build_tab(self, app: Any, state: Any, zoo: Any) -> None:
        import gradio as gr

        from mergezoo.spaces.app import MODELS, ui_errors

        with gr.Tab("Publish"):
            gr.Markdown("Push the current merge (weights, recipe, provenance and a model card) "
                        "to a Hub repo in one commit. The token is used for this push only.")
            repo = gr.Textbox(label="repo (namespace/name)", max_length=200)
            token = gr.Textbox(label="Hub token with write access", type="password",
                               max_length=200)
            private = gr.Checkbox(False, label="private repo")
            button = gr.Button("Publish", variant="primary")
            status = gr.Markdown(elem_id="publish-status")

        @ui_errors
        def publish(st, zoo_name, repo_id, token_value, private_value):
            return self.publish(app, st, zoo_name, repo_id, token_value, private_value)

        button.click(publish, [state, zoo, repo, token, private], status, api_name="publish",
                     concurrency_id=MODELS)
