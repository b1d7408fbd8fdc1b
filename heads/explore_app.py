"""The ``localize explore`` web app (Gradio, on 127.0.0.1) over :class:`~localize.heads.explore.Explorer`.

    localize explore [--model shapes-tiny] [--heads auto] [--sam sam_vit_b.pth] [--port 7860]

:class:`ExplorerApp` holds the app's state (the loaded explorer, replaced by "Load"); :func:`build_app` lays out
the page; :func:`run` is the command. Gradio is imported only here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from localize.headsfile import format_head

from .explore import Explorer, heads_file_of

DEFAULT_MODEL = "shapes-tiny"  # the embedded model, as for localize ground


def result_json(explorer: Explorer, image: Any, groundings: list, source: str) -> dict[str, Any]:
    """The JSON ``localize ground --out`` writes, for these groundings."""
    localizer = explorer.localizer.with_heads(explorer.heads, source="explorer")
    return localizer.result_record(image, groundings, source)


def _phrases(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _heads_text(explorer: Explorer, source: str | None) -> str:
    used = ", ".join(format_head(h) for h in explorer.heads)
    changed = list(explorer.heads) != list(explorer.localizer.heads)
    origin = f"{source or 'given'}, changed here" if changed else source or "given"
    return f"**Heads in use:** {used}  \n**From:** {origin} (click a tile to add or remove a head)"


def _results_text(groundings: list, seconds: float, label: str) -> str:
    lines = [f"*{label}: {seconds * 1000:.0f} ms*", ""]
    for g in groundings:
        x0, y0, x1, y1 = g.box
        lines.append(f"- “{g.phrase}”: box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}), score {g.score:.2f}")
    return "\n".join(lines)


class ExplorerApp:
    """The web app's state: the loaded :class:`Explorer` (replaced by "Load") and the last analysis."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.explorer: Explorer | None = None
        self.source: str | None = None
        self.outputs = Path(tempfile.mkdtemp(prefix="localize-explore-"))
        self.status = self.load(args.model or DEFAULT_MODEL, args.heads)

    def load(self, model: str, heads: str) -> str:
        """Load ``model`` with ``heads`` ("auto", a file or "L14 H24,..."); returns a status line."""
        from localize.options import localizer_from_args

        args = argparse.Namespace(**{**vars(self.args), "model": model, "heads": heads or "auto"})
        localizer = localizer_from_args(args, model=model)
        self.source = localizer.heads_source
        self.explorer = Explorer(localizer, heads_file_of(self.source))
        layers, heads_per_layer = self.explorer.shape
        return f"Loaded **{model}** ({localizer.vlm.adapter.family}, {layers} layers x {heads_per_layer} heads)."

    def run(self, image: Any, text: str, shown: str | None = None) -> tuple:
        """Capture every head for each phrase and ground with the heads in use."""
        from localize.errors import InputError

        if image is None:
            raise InputError("upload or pick an image first")
        phrases = _phrases(text)
        if not phrases:
            raise InputError("type at least one phrase (one per line)")
        start = time.perf_counter()
        image = self.explorer.localizer.load_image(image)
        grids = self.explorer.analyse(image, phrases)
        groundings = self.explorer.ground(image, grids)
        seconds = time.perf_counter() - start
        shown = shown if shown in phrases else phrases[0]
        return self._views(image, grids, groundings, shown, seconds, "capture of every head + grounding")

    def toggle(self, image: Any, text: str, shown: str | None, x: float, y: float) -> tuple | None:
        """Add or remove the head under (x, y) of the grid and reground from the cached maps."""
        head = self.explorer.head_at(x, y)
        if head is None or image is None or not _phrases(text):
            return None
        self.explorer.toggle(head)
        return self.reground(image, text, shown)

    def reground(self, image: Any, text: str, shown: str | None) -> tuple:
        """Ground again with the heads in use, from the cached maps."""
        start = time.perf_counter()
        image = self.explorer.localizer.load_image(image)
        grids = self.explorer.analyse(image, _phrases(text))  # cached: no forward pass
        groundings = self.explorer.ground(image, grids)
        seconds = time.perf_counter() - start
        return self._views(image, grids, groundings, shown, seconds, "head change, no forward pass")

    def reset(self, image: Any, text: str, shown: str | None) -> tuple | None:
        """Back to the loaded heads."""
        self.explorer.heads = list(self.explorer.localizer.heads)
        return self.reground(image, text, shown) if image is not None and _phrases(text) else None

    def _views(self, image, grids, groundings, shown, seconds, label) -> tuple:
        by_phrase = {g.phrase: g for g in grids}
        grid = by_phrase.get(shown, grids[0])
        tau, tau_source = self.explorer.tau(grid)
        overlays = [(g.render(), g.phrase) for g in groundings]
        path = self.outputs / "result.json"
        path.write_text(json.dumps(result_json(self.explorer, image, groundings, "explorer"), indent=2))
        legend = f"Head grid for “{grid.phrase}”: S = S_img, H = spatial entropy; amber: S_img ≥ τ {tau:.3f} " \
                 f"({tau_source}); red: in use."  # fmt: skip
        return (
            overlays, _results_text(groundings, seconds, label), _heads_text(self.explorer, self.source),
            self.explorer.render(grid), legend, str(path), list(by_phrase), grid.phrase,
        )  # fmt: skip


def example_images() -> list[str]:
    """The shipped example images' paths."""
    from localize.images import EXAMPLES, example_image

    return [example_image(name) for name in EXAMPLES]


def build_app(state: ExplorerApp) -> Any:
    """The page: model, image (upload or a shipped example), phrases; overlays, results, heads, the head grid."""
    import gradio as gr

    def guarded(fn, views: bool = True):
        def call(*args):
            from localize.errors import LocalizeError

            try:
                out = fn(*args)
            except LocalizeError as err:
                raise gr.Error(str(err)) from None
            if not views:
                return out
            if out is None:
                return tuple(gr.skip() for _ in outputs)
            *rest, choices, value = out
            return (*rest, gr.Dropdown(choices=choices, value=value))

        return call

    def on_select(image, text, shown, evt):
        return guarded(state.toggle)(image, text, shown, *evt.index)

    on_select.__annotations__["evt"] = gr.SelectData  # a real class: this module's annotations are strings

    with gr.Blocks(title="localize explore") as app:
        gr.Markdown("# localize explore\nEvery attention head's map for a phrase; click a head to use it or not.")
        with gr.Row():
            model = gr.Textbox(value=state.args.model or DEFAULT_MODEL, label="model (alias, hub id or directory)")
            heads = gr.Textbox(value=state.args.heads, label='heads ("auto", a heads file or "L14 H24,...")')
            load = gr.Button("Load")
        status = gr.Markdown(state.status)
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image", elem_id="image")
                if example_images():
                    gr.Examples(example_images(), inputs=[image], label="shipped examples")
                phrases = gr.Textbox(lines=3, label="phrases (one per line)", elem_id="phrases")
                with gr.Row():
                    run = gr.Button("Ground", variant="primary", elem_id="run")
                    reset = gr.Button("Reset heads")
            with gr.Column():
                gallery = gr.Gallery(label="box (red), mask (cyan), heatmap", elem_id="overlays", columns=2)
                results = gr.Markdown(elem_id="results")
                used = gr.Markdown(elem_id="heads")
                download = gr.File(label="result JSON (as localize ground --out)")
        shown = gr.Dropdown(label="head grid for phrase", choices=[], interactive=True)
        legend = gr.Markdown()
        grid = gr.Image(label="every head (click to add / remove)", interactive=False, elem_id="head-grid")
        outputs = [gallery, results, used, grid, legend, download, shown]
        load.click(guarded(state.load, views=False), [model, heads], [status])
        run.click(guarded(state.run), [image, phrases, shown], outputs)
        shown.input(guarded(state.reground), [image, phrases, shown], outputs)
        reset.click(guarded(state.reset), [image, phrases, shown], outputs)
        grid.select(on_select, [image, phrases, shown], outputs)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize explore``."""
    from localize.options import add_grounding_arguments

    parser.add_argument("--model", default=None, help=f"alias, hub id or local directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--heads", default="auto", help='"auto", a heads file, or "L14 H24,L14 H13"')
    add_grounding_arguments(parser)
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")


def run(args: argparse.Namespace) -> int:
    """Load the model and serve the explorer on 127.0.0.1 until interrupted."""
    state = ExplorerApp(args)
    print(f"localize explore: http://127.0.0.1:{args.port}", flush=True)
    build_app(state).launch(server_name="127.0.0.1", server_port=args.port, share=False, show_error=True)
    return 0
