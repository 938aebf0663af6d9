"""The Gradio demo in a real headless Chromium (Debian's, driven by Playwright): log in with
an API key, upload an X-ray DICOM, see it, write the report, and read the same report the
API gives for the same upload; a CT zip shows its slice slider.

scripts/setup.sh installs Chromium at /usr/bin/chromium (Playwright's own browser download
is not reachable from our machines); without it these tests fail and say so.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.serve_apps.conftest import KEY, zipped

pytestmark = pytest.mark.slow  # a browser, against the app on a local Ray Serve

CHROMIUM = Path("/usr/bin/chromium")
# Flags of a browser on a machine without internet: no background calls home, no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    assert os.access(CHROMIUM, os.X_OK), (
        f"the browser test drives Debian's Chromium at {CHROMIUM}, which this machine lacks: "
        "run scripts/setup.sh (it installs it with apt-get), or install the chromium package"
    )
    return str(CHROMIUM)


@pytest.fixture
def page(chromium):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def log_in(page, base_url: str) -> None:
    page.goto(f"{base_url}/demo/", timeout=60_000)
    page.get_by_label("username").fill("doctor")
    page.get_by_label("password").fill(KEY)
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_role("button", name="Write")).to_be_visible(timeout=60_000)


def files_in(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def test_upload_an_xray_and_read_the_streamed_report(page, base_url, xray_dicom, tmp_path, gradio_folder):
    upload = tmp_path / "chest.dcm"
    upload.write_bytes(xray_dicom)
    log_in(page, base_url)
    page.locator("input[type=file]").set_input_files(str(upload))
    expect(page.locator("#preview img")).to_be_visible(timeout=60_000)  # the image as the model sees it
    page.get_by_role("button", name="Write").click()

    expected = httpx.post(
        f"{base_url}/v1/reports",
        headers={"Authorization": f"Bearer {KEY}"},
        data={"task": "xray_report"},
        files={"file": ("chest.dcm", xray_dicom)},
        timeout=120,
    ).json()["report"]
    assert expected.strip(), "the served model wrote nothing: the comparison below would prove little"
    report = page.locator("#report textarea")
    expect(report).to_have_value(expected, timeout=60_000)
    screenshot = tmp_path / "demo.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"demo screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    # the upload, identifying, was taken into the page's session; its preview never was a file
    assert files_in(gradio_folder) == []


def test_a_ct_zip_gets_a_slice_slider(page, base_url, ct_series, tmp_path):
    upload = tmp_path / "series.zip"
    upload.write_bytes(zipped(ct_series))
    log_in(page, base_url)
    page.locator("input[type=file]").set_input_files(str(upload))
    expect(page.locator("#preview img")).to_be_visible(timeout=60_000)
    expect(page.get_by_label("CT slice").first).to_be_visible(timeout=60_000)


def test_the_demo_needs_a_key(page, base_url):
    page.goto(f"{base_url}/demo/", timeout=60_000)
    page.get_by_label("username").fill("doctor")
    page.get_by_label("password").fill("wrong-key")
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_text("Incorrect", exact=False)).to_be_visible(timeout=30_000)
