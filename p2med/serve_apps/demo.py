"""The Gradio demo, mounted on the API's own app at /demo: upload an X-ray (DICOM, PNG or
JPEG) or a CT series (DICOM files or one zip), pick the task, add clinical text, see the
image (a CT with a slice slider) and the report as it is written.

The page calls the same code path as `POST /v1/reports` (`write`), and shows the image
as the model sees it (`preview`: the ingest's preprocessing). An upload is identifying:
its files are read into the page's session state and deleted from Gradio's upload folder
at once (`load`); the session's state goes when the page closes. The image is shown as a
PNG data URI in the page's HTML, never written to a file (Gradio's image component would
write each one to its cache folder and keep it there until the server stops).
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

TASK_LABELS = {
    "xray_report": "Chest X-ray report",
    "ct_report": "Chest CT report",
    "outpatient_record": "Outpatient record",
    "inpatient_record": "Inpatient record",
    "differential_diagnosis": "Differential diagnosis",
}

Write = Callable[[str, list[bytes], str], Awaitable[AsyncIterator[str]]]
Preview = Callable[[list[bytes]], tuple[str, np.ndarray]]


class DemoRefusal(Exception):
    """A request the demo cannot serve; shown to the user as it is."""


def build_demo(write: Write, preview: Preview) -> gr.Blocks:
    """The page. `write(task, files, clinical_text)`: the report's pieces; `preview(files)`:
    ("xray", (S, S)) or ("ct", (D, H, W)) in [0, 1]. Both raise DemoRefusal for bad input."""

    def load(files: list[dict] | None) -> list[bytes] | None:
        return _taken(files) if files else None

    def show(uploaded: list[bytes] | None):
        if not uploaded:
            return None, gr.update(visible=False), None
        try:
            kind, pixels = preview(uploaded)
        except DemoRefusal as refusal:
            raise gr.Error(str(refusal)) from None
        if kind == "xray":
            return _shown(pixels), gr.update(visible=False), None
        middle = len(pixels) // 2
        slider = gr.update(visible=True, minimum=0, maximum=len(pixels) - 1, value=middle)
        return _shown(pixels[middle]), slider, pixels

    def pick_slice(volume: np.ndarray | None, index: float):
        return None if volume is None else _shown(volume[int(index)])

    async def report(files: list[dict] | None, uploaded: list[bytes] | None, task: str, clinical_text: str):
        # the page's upload was taken into the session (`load`); a client of the page's
        # API (gradio_client) sends its files with the call instead
        uploaded = uploaded or (_taken(files) if files else None)
        if not uploaded:
            raise gr.Error("Upload an X-ray or a CT series first.")
        try:
            pieces = await write(task, uploaded, clinical_text or "")
            text = ""
            async for piece in pieces:
                text += piece
                yield text
        except DemoRefusal as refusal:
            raise gr.Error(str(refusal)) from None

    with gr.Blocks(title="P2Med demo") as demo:
        gr.Markdown(
            "## P2Med: reports for pediatric chest imaging\n"
            "Upload a chest X-ray (DICOM, PNG or JPEG) or a CT series (DICOM files or one zip). "
            "A research model trained on synthetic data: not for clinical use."
        )
        with gr.Row():
            with gr.Column():
                files = gr.File(label="Image files", file_count="multiple", type="filepath")
                task = gr.Dropdown(
                    choices=[(label, key) for key, label in TASK_LABELS.items()],
                    value="xray_report",
                    label="Task",
                )
                clinical = gr.Textbox(label="Clinical text (optional)", lines=3)
                run = gr.Button("Write", variant="primary")
            with gr.Column():
                gr.Markdown("Image as the model sees it")
                image = gr.HTML(elem_id="preview", min_height=DISPLAY_SIDE)
                slice_index = gr.Slider(label="CT slice", minimum=0, maximum=1, step=1, visible=False)
                output = gr.Textbox(label="Report", lines=12, elem_id="report")
        volume, uploaded = gr.State(), gr.State()
        # the file component's own preprocessing leaves an empty file in Gradio's folder
        # each time (gradio 6.31): its handlers take the files as sent, {"path": ...} each
        loaded = files.change(load, files, uploaded, preprocess=False)
        loaded.then(show, uploaded, [image, slice_index, volume])
        slice_index.change(pick_slice, [volume, slice_index], image)
        run.click(report, [files, uploaded, task, clinical], output, preprocess=False)
    return demo


def _taken(files: list[dict]) -> list[bytes]:
    """The bytes of the files Gradio received ({"path": ...} each); the files, and the
    folders Gradio made for them, are deleted."""
    taken = []
    for path in (Path(file["path"]) for file in files):
        try:
            taken.append(path.read_bytes())
        finally:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a folder of its own per upload, unless shared
                path.parent.rmdir()
    return taken


DISPLAY_SIDE = 320  # small model inputs (64-128 px) are enlarged to about this for the eye


def _grey(pixels: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H * f, W * f) uint8 for display, f a whole enlargement factor."""
    factor = max(1, DISPLAY_SIDE // max(pixels.shape))
    enlarged = pixels.repeat(factor, axis=0).repeat(factor, axis=1)
    return (np.clip(enlarged, 0, 1) * 255).astype(np.uint8)


def _shown(pixels: np.ndarray) -> str:
    """(H, W) in [0, 1] -> an <img> of its `_grey` picture as a PNG data URI."""
    png = io.BytesIO()
    Image.fromarray(_grey(pixels)).save(png, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
    return f'<img src="{uri}" alt="the uploaded image as the model sees it">'
