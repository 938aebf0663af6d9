"""The Gradio demo in a real headless Chromium (Debian's, driven by Playwright): log in with
an API key, upload an X-ray DICOM, see it, write the report, and read the same report the
API gives for the same upload; a CT zip shows its slice slider.

The test installs Chromium with apt when the machine lacks it (Playwright's own browser
download is not reachable from our machines).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.serve_apps.conftest import KEY, zipped

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
    if not CHROMIUM.exists():
        apt = shutil.which("apt-get")
        assert apt, "the browser test needs Debian's chromium and cannot install it here (no apt-get)"
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run([apt, "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run([apt, "install", "-y", "-q", "chromium"], check=True, env=env, capture_output=True)
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


def test_upload_an_xray_and_read_the_streamed_report(page, base_url, xray_dicom, tmp_path):
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
