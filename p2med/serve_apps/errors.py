"""Errors the serving app answers with 4xx: the request's fault, not the server's."""

from __future__ import annotations


class ClientError(ValueError):
    """A request the app cannot serve because of what it asks or sends; the message names
    the problem, quotes no patient data, and is safe to return to the client."""


class BadUpload(ClientError):
    """An upload that cannot become model input (not an image, a corrupt DICOM, ...)."""
