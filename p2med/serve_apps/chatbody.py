"""A chat request's JSON body, read as it streams in, with its images set apart.

A chat body may be tens of MiB of base64 data URIs around a few KB of text. Parsed
whole, it is held as bytes, then as text and as the parsed strings, then once more while
each URI is decoded: several times its size in the ingress. Instead each base64 data
URI's payload is decoded as its chunks arrive and set apart (`ChatBody.images`); the
JSON keeps the URI's header with the payload replaced by `*<index>` (not base64, so no
client's URI reads as one), and stays as small as the text. Its size also bounds the
text, so a huge prompt is refused before it has all arrived, and the count of images is
checked as each one starts, so a request with too many is refused at the first one over.
"""

from __future__ import annotations

import binascii
import io
import re

from p2med.serve_apps.errors import ClientError

OPENING = b'"data:'
"""Where a data URI string starts. Its quote opens a JSON string: one preceded by a
backslash is an escaped quote inside text."""
MAX_HEADER = 128
"""The most bytes of a URI's header ("data:application/dicom;base64,") looked at."""
HEADER_END = re.compile(rb'[,"\\]')
PAYLOAD_END = re.compile(rb'["\\]')
REFERENCE = re.compile(r"\*(\d+)")
"""A payload set apart: `*<index>` into `ChatBody.images`."""


class ChatBody:
    """The body of one request, fed chunk by chunk (`add`, then `end`).

    `json` is the body with every base64 data URI's payload replaced by `*<index>` of its
    decoded bytes in `images`. Anything else (text, a URI that is not base64, a string
    that only starts like one) is kept as it came. A text part that is itself a base64
    data URI is set apart too. More than `max_images` such URIs: refused when the next one
    starts.
    """

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.json = bytearray()
        self.images: list[bytes] = []
        self._state = self._outside
        self._carry = b""  # bytes of the last chunk not judged yet
        self._header = bytearray()
        self._pending = bytearray()  # base64 characters not decoded yet (less than a quantum)
        self._image = io.BytesIO()  # its getvalue() hands over its buffer: no copy of an image
        self._padded = False  # a quantum with "=" was decoded: the payload must end

    def add(self, chunk: bytes) -> None:
        """Raises:
        ClientError: a data URI's payload that is not base64; more images than `max_images`."""
        data, self._carry = self._carry + chunk, b""
        at = 0
        while at < len(data):
            at = self._state(data, at)

    def end(self) -> None:
        """After the last chunk: keeps what was held back to be judged with a next one (a
        body cut inside a URI's payload is then not JSON)."""
        if self._state == self._in_header:
            self.json += self._header
        self.json += self._carry
        self._carry = b""

    def _outside(self, data: bytes, at: int) -> int:
        start = data.find(OPENING, at)
        while start >= 0 and self._escaped(data, start, at):
            start = data.find(OPENING, start + 1)
        if start < 0:  # the end may hold the start of an opening: judged with the next chunk
            keep = max(at, len(data) - len(OPENING) + 1)
            self.json += data[at:keep]
            self._carry = data[keep:]
            return len(data)
        end = start + len(OPENING)
        self.json += data[at:end]
        self._header.clear()
        self._state = self._in_header
        return end

    def _escaped(self, data: bytes, quote: int, at: int) -> bool:
        before = data[quote - 1 : quote] if quote > at else self.json[-1:]
        return before == b"\\"

    def _in_header(self, data: bytes, at: int) -> int:
        found = HEADER_END.search(data, at)
        end = found.start() if found else len(data)
        if len(self._header) + end - at > MAX_HEADER:  # too long for a data URI's header
            return self._not_a_uri(at)
        self._header += data[at:end]
        if found is None:
            return len(data)
        if data[end] == ord("\\"):  # "image\/png", as JSON may escape "/"
            if end + 1 == len(data):
                self._carry = data[end:]
                return len(data)
            if data[end + 1] == ord("/"):
                self._header += b"/"
                return end + 2
        if data[end] != ord(",") or not self._header.endswith(b";base64"):
            return self._not_a_uri(end)
        if len(self.images) == self.max_images:
            most = self.max_images
            raise ClientError(f"the messages hold over {most} images; this server takes at most {most}")
        self.json += self._header + b","
        self._image = io.BytesIO()
        self._padded = False
        self._state = self._in_payload
        return end + 1

    def _not_a_uri(self, at: int) -> int:
        """Keeps the header read so far as it came, and reads on from `at` as outside."""
        self.json += self._header
        self._state = self._outside
        return at

    def _in_payload(self, data: bytes, at: int) -> int:
        found = PAYLOAD_END.search(data, at)
        end = found.start() if found else len(data)
        self._pending += data[at:end]
        self._decode(final=False)
        if found is None:
            return len(data)
        if data[end] == ord("\\"):  # JSON may escape "/" (PHP does); base64 needs no other escape
            if end + 1 == len(data):
                self._carry = data[end:]
                return len(data)
            if data[end + 1] != ord("/"):
                raise ClientError("an image_url's data URI holds invalid base64")
            self._pending += b"/"
            return end + 2
        self._decode(final=True)
        self.json += b"*%d" % len(self.images)
        self.images.append(self._image.getvalue())
        self._image = io.BytesIO()
        self._state = self._outside
        return end  # the closing quote is copied outside

    def _decode(self, final: bool) -> None:
        whole = len(self._pending) if final else len(self._pending) // 4 * 4
        if not whole:
            return
        if self._padded:
            raise ClientError("an image_url's data URI holds invalid base64")
        try:
            self._image.write(binascii.a2b_base64(self._pending[:whole], strict_mode=True))
        except binascii.Error:
            raise ClientError("an image_url's data URI holds invalid base64") from None
        self._padded = b"=" in self._pending[:whole]
        del self._pending[:whole]
