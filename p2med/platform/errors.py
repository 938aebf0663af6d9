"""The one exception type that reaches users as a one-line message instead of a traceback."""


class P2MedError(Exception):
    """A problem with the user's input or environment, stated so they can fix it.

    The CLI prints `error: <message>` and exits non-zero; the message names the input
    and what is wrong with it. Never put identifying data (DICOM headers, record text)
    into one.
    """


class ConfigError(P2MedError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class StorageError(P2MedError):
    """A storage location cannot be reached, read or written."""
