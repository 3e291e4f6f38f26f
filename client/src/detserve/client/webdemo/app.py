"""The Gradio page: image in (upload, paste or an example), score slider, annotated image, table, status line.

``build_app`` takes a ready :class:`~detserve.client.Detector`; ``detserve demo`` (command.py) and the Space
(demo/space/app.py) make one from their settings. Gradio is imported here only, never by the base client.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..detector import Detector
from . import logic

__all__ = ["build_app", "theme", "launch", "require_gradio", "COUNT_ID", "STATUS_ID"]

# Stable element ids: the browser test (and anyone scripting the page) reads these.
COUNT_ID = "detection-count"
STATUS_ID = "detection-status"
# System fonts only: a theme font given as a GoogleFont is fetched from fonts.googleapis.com, which an air-gapped
# cluster cannot reach; system fonts keep a theme change or a Gradio upgrade from bringing such a fetch back.
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial",
                "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


def require_gradio():
    """Gradio, or a clear error naming the extra that installs it."""
    # Before the first import: Gradio reads this at import time to decide whether to phone home.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise RuntimeError("the web demo needs Gradio: pip install 'detserve-client[demo]'") from error
    return gradio


def theme():
    gr = require_gradio()
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))


def build_app(detector: Detector, examples: Sequence[str | Path] = (), default_threshold: float = 0.5,
              model: str | None = None):
    """The page for ``detector`` (a gr.Blocks; call :func:`launch` or ``.launch(theme=theme())``)."""
    gr = require_gradio()
    if not 0.0 <= default_threshold <= 1.0:
        raise ValueError(f"default_threshold {default_threshold} is not in [0, 1]")
    server = detector.server
    model = model or detector._core.model.name

    def detect(image: np.ndarray | None, threshold: float):
        """A new image: one server call (at logic.DETECT_THRESHOLD), then the view for the slider's value."""
        if image is None:
            return None, None, [], logic.count_text(0, threshold), ""
        try:
            answer = logic.ask(detector, image)
        except Exception as error:  # noqa: BLE001 - the page shows every failure as a message, never a crash
            return None, None, [], logic.count_text(0, threshold), logic.error_text(error, server, model)
        annotated, rows, count = logic.render(image, answer, threshold)
        return (image, answer), annotated, rows, count, logic.status_text(answer, server)

    def refilter(state, threshold: float):
        """The slider moved: re-filter the cached detections, no server call."""
        if state is None:
            return gr.skip(), gr.skip(), logic.count_text(0, threshold)
        image, answer = state
        annotated, rows, count = logic.render(image, answer, threshold)
        return annotated, rows, count

    with gr.Blocks(title="detserve demo", analytics_enabled=False) as app:
        gr.Markdown(f"## detserve demo\nModel `{model}` served at `{server}`. Upload or paste an image, or pick an "
                    "example; the slider filters the boxes without asking the server again.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="numpy", image_mode="RGB", sources=["upload", "clipboard"],
                                 elem_id="input-image")
                threshold = gr.Slider(logic.DETECT_THRESHOLD, 1.0, value=default_threshold, step=0.01, label="Score threshold",
                                      elem_id="score-threshold")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[image], label="Examples")
            with gr.Column():
                # JPEG: Pillow encodes a 2-megapixel photo in milliseconds, PNG takes ~0.4 s (measured, docs/demo.md),
                # and every slider move sends the image again.
                annotated = gr.Image(label="Detections", type="pil", interactive=False, format="jpeg",
                                     elem_id="annotated-image")
                count = gr.Markdown(logic.count_text(0, default_threshold), elem_id=COUNT_ID)
                status = gr.Markdown("", elem_id=STATUS_ID)
        table = gr.Dataframe(headers=logic.TABLE_HEADERS, datatype=["str", "number", "number", "number", "number",
                                                                     "number"],
                             interactive=False, label="Detections (boxes in pixels of the original image)",
                             elem_id="detections-table")
        image.change(detect, [image, threshold], [state, annotated, table, count, status])
        threshold.change(refilter, [state, threshold], [annotated, table, count], show_progress="hidden")
    return app


def launch(app, host: str = "127.0.0.1", port: int = 7860, **options):
    """Serve ``app`` with the offline theme and no analytics; blocks unless ``prevent_thread_lock=True``."""
    return app.launch(server_name=host, server_port=port, theme=theme(), show_error=True, **options)
