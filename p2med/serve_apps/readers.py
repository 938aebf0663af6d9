"""Uploads' headers read in processes beside the ingress, not in it.

Reading a DICOM header is pure Python and holds the GIL while it runs: in the ingress's
own process, a CT's slices, or a malformed file's sequences nested thousands deep, would
hold up the event loop that every other request (a health check too) needs between its
steps. In processes of their own they only share the CPU.

    readers = HeaderReaders(2)
    upload = readers.inspect(files, max_bytes)   # blocks: call it off the event loop
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from p2med.platform.data.image_files import ImageFiles, file_type
from p2med.serve_apps.uploads import inspect_upload


class HeaderReaders:
    """`inspect_upload` in `processes` worker processes, started at once (spawned: the
    ingress's process holds Ray's threads, which a fork would copy in whatever state)."""

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._lock = threading.Lock()
        self._pool = self._start()

    def inspect(self, files: list[bytes], max_bytes: int) -> ImageFiles:
        """What `inspect_upload(files, max_bytes)` says, read in a worker process.

        Raises:
            BadUpload: as `inspect_upload` does.
            BrokenProcessPool: a worker died while it held this request (killed, out of
                memory); the requests after it get new workers.
        """
        pool = self._pool
        try:
            return pool.submit(inspect_upload, files, max_bytes).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = self._start()
            raise

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"))
        # A worker starts when a call finds none idle: these start them all now and have
        # them import what reading headers needs, so that the first uploads do not wait,
        # and a worker that cannot start fails the replica's start, not a request.
        for started in [pool.submit(file_type, b"") for _ in range(self._processes)]:
            started.result()
        return pool
