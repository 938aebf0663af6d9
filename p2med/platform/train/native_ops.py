"""The build tool of DeepSpeed's JIT-built ops (on CPU, its shared-memory comm op).

torch builds them with the `ninja` first on PATH, into `TORCH_EXTENSIONS_DIR`, and ninja's
log there decides what is up to date. Ninja releases do not read each other's log (1.11
and 1.13 hash the commands differently), so on a machine with a system ninja besides the
one installed with DeepSpeed, processes started with different PATHs (an activated venv
or not, a Ray job's environment) rebuild the op in turn, most of a minute each; on a
machine with neither, the op cannot be built. Every process that starts DeepSpeed calls
`use_installed_ninja` first, so that all of them build with the same one.
"""

from __future__ import annotations

import os
import sysconfig


def use_installed_ninja() -> None:
    """Puts this Python environment's scripts folder (where `pip` installed DeepSpeed's
    `ninja`) first on this process's PATH."""
    scripts = sysconfig.get_path("scripts")
    entries = [e for e in os.environ.get("PATH", "").split(os.pathsep) if e and e != scripts]
    os.environ["PATH"] = os.pathsep.join([scripts, *entries])
