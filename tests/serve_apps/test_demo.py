"""The demo page's event handlers, called as Gradio calls them but in this process: an
upload shows the image as the model sees it (a CT its middle slice and a slider), the
slider picks slices, the report streams as it is written, and refusals reach the page
as Gradio errors. The page in a real browser against the app: test_demo_browser.py."""

from __future__ import annotations

import asyncio
import base64
import io
import re

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from p2med.serve_apps.demo import DISPLAY_SIDE, DemoRefusal, build_demo
from p2med.serve_apps.errors import ClientError
from p2med.serve_apps.uploads import decode_upload
from tests.serve_apps.conftest import zipped
from tests.serve_apps.test_uploads import IMAGING, LIMIT


def preview(files: list[bytes]):
    """What the app passes: the uploads' own decoding, its refusals as the demo's."""
    try:
        return decode_upload(files, IMAGING, LIMIT)
    except ClientError as refusal:
        raise DemoRefusal(str(refusal)) from None


written: list[tuple[str, int, str]] = []


async def write(task: str, files: list[bytes], clinical_text: str):
    """A model stand-in that says what it was given, in two pieces."""
    if task == "inpatient_record":
        raise DemoRefusal("task inpatient_record takes no image")
    written.append((task, len(files), clinical_text))

    async def pieces():
        yield f"{task}: "
        yield f"{len(files)} file(s)"

    return pieces()


@pytest.fixture(scope="module")
def handlers():
    demo = build_demo(write, preview)
    return {function.name: function.fn for function in demo.fns.values()}


def picture(html: str) -> np.ndarray:
    """The pixels of the one PNG data URI image in `html`."""
    (encoded,) = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))


def saved(folder, name: str, data: bytes) -> dict:
    """A file as Gradio hands it to the handlers (unprocessed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return {"path": str(path), "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def test_an_upload_is_read_into_the_session_and_its_files_deleted(handlers, xray_dicom, tmp_path):
    files = [saved(tmp_path / "upload-1", "x.dcm", xray_dicom), saved(tmp_path / "upload-2", "y.dcm", b"y")]
    assert handlers["load"](files) == [xray_dicom, b"y"]
    assert not list(tmp_path.iterdir())  # files and their folders gone
    assert handlers["load"](None) is None


def test_an_xray_is_shown_as_the_model_sees_it_from_no_file(handlers, xray_dicom):
    html, slider, volume = handlers["show"]([xray_dicom])
    shown = picture(html)  # a data URI in the page: Gradio's image component writes a file
    _, pixels = decode_upload([xray_dicom], IMAGING, LIMIT)
    factor = DISPLAY_SIDE // IMAGING.xray_size
    assert shown.shape == (IMAGING.xray_size * factor,) * 2 and shown.dtype == np.uint8
    assert np.array_equal(shown[::factor, ::factor], (pixels * 255).astype(np.uint8))
    assert slider["visible"] is False and volume is None


def test_a_ct_shows_its_middle_slice_and_a_slider_over_its_slices(handlers, ct_series):
    html, slider, volume = handlers["show"]([zipped(ct_series)])
    assert volume.shape == (IMAGING.ct_slices, IMAGING.ct_size, IMAGING.ct_size)
    assert slider["visible"] is True and (slider["minimum"], slider["maximum"]) == (0, IMAGING.ct_slices - 1)
    middle = slider["value"]
    assert middle == IMAGING.ct_slices // 2
    assert np.array_equal(picture(html), picture(handlers["pick_slice"](volume, middle)))
    assert not np.array_equal(picture(handlers["pick_slice"](volume, 0)), picture(html))
    assert handlers["pick_slice"](None, 3) is None


def test_the_report_streams_and_refusals_reach_the_page(handlers, xray_dicom, tmp_path):
    uploaded = [xray_dicom]

    async def texts(*args):
        return [text async for text in handlers["report"](*args)]

    assert asyncio.run(texts(None, uploaded, "xray_report", None)) == [
        "xray_report: ",
        "xray_report: 1 file(s)",
    ]
    assert written[-1] == ("xray_report", 1, "")  # no clinical text is ""
    # an API client's call brings its files: read, then deleted
    file = saved(tmp_path / "upload", "x.dcm", xray_dicom)
    assert asyncio.run(texts([file], None, "xray_report", ""))[-1] == "xray_report: 1 file(s)"
    assert not list(tmp_path.iterdir())
    with pytest.raises(gr.Error, match="Upload an X-ray or a CT series first"):
        asyncio.run(texts(None, None, "xray_report", ""))
    with pytest.raises(gr.Error, match="takes no image"):
        asyncio.run(texts(None, uploaded, "inpatient_record", ""))
    with pytest.raises(gr.Error, match="not an image"):
        handlers["show"]([b"not an image"])
    assert handlers["show"]([]) == (None, {"__type__": "update", "visible": False}, None)
