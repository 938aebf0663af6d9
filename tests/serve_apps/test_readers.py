"""Uploads' headers read in worker processes: the same answers and refusals as in the
caller's process, and a worker that dies fails only the call it held."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

from p2med.serve_apps.errors import BadUpload
from p2med.serve_apps.readers import HeaderReaders
from p2med.serve_apps.uploads import inspect_upload
from tests.serve_apps.test_uploads import LIMIT, picture


def test_readers_answer_as_inspect_upload_and_replace_a_dead_worker():
    before = {child.pid for child in psutil.Process().children()}
    readers = HeaderReaders(1)
    png = picture("L", "PNG")
    assert readers.inspect([png], LIMIT) == inspect_upload([png], LIMIT)
    with pytest.raises(BadUpload, match="not an image"):
        readers.inspect([b"just some text"], LIMIT)

    started = [child for child in psutil.Process().children() if child.pid not in before]
    (worker,) = [child for child in started if "spawn_main" in " ".join(child.cmdline())]
    worker.kill()
    worker.wait()
    with pytest.raises(BrokenProcessPool):
        readers.inspect([png], LIMIT)
    assert readers.inspect([png], LIMIT).kind == "xray"
