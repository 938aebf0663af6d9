"""How much of a JSON request body could be text, counted while the body streams in.

A chat body may be tens of MiB of base64 images, but its text is bounded
(`max_prompt_chars`): counting the bytes outside the images' data URIs as the chunks
arrive lets the ingress refuse a huge prompt before it receives it whole, instead of
parsing it (a 60 MB JSON string holds the event loop for about 0.1 s: docs/performance.md).
"""

from __future__ import annotations

OPENING = b'"data:'
"""Where a data URI string starts. Its quote opens a JSON string: one preceded by a
backslash is an escaped quote inside text."""


class TextMeter:
    """Counts a JSON body's bytes outside its strings that start with `data:`.

    For valid JSON, whatever the chunking, every byte is counted except those from the
    opening quote of a `data:` string to the next quote: a bound on the text. A text part
    that starts with "data:" counts as an image: this is a cheap first limit, and the
    parsed request's text is checked after it."""

    def __init__(self) -> None:
        self.outside = 0
        self._in_uri = False
        self._carry = b""  # the last bytes outside a URI, counted already: an opening may span chunks

    def add(self, chunk: bytes) -> None:
        data = self._carry + chunk
        counted = len(self._carry)  # data[:counted] is in `outside` already
        at = max(0, counted - len(OPENING) + 1)  # an opening wholly in the carry was judged before
        while True:
            if self._in_uri:
                end = data.find(b'"', at)
                if end < 0:
                    self._carry = b""
                    return
                self._in_uri, at = False, end + 1
                counted = max(counted, at)
                continue
            start = data.find(OPENING, at)
            while start > 0 and data[start - 1] == ord("\\"):
                start = data.find(OPENING, start + 1)
            if start < 0:
                self.outside += len(data) - counted
                # an opening may begin here and end in the next chunk; the byte before its
                # quote tells an escaped quote
                self._carry = data[max(at, len(data) - len(OPENING)) :]
                return
            self.outside += start - counted  # less than 0 where the opening began in the carry
            self._in_uri, at = True, start + len(OPENING)
            counted = max(counted, at)
