"""DeepSpeed's JIT-built op is built with one ninja whatever PATH a process starts with."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from p2med.platform.train.native_ops import use_installed_ninja


def test_the_installed_ninja_comes_first_and_the_path_keeps_the_rest(monkeypatch):
    scripts = sysconfig.get_path("scripts")
    assert (Path(scripts) / "ninja").is_file()  # DeepSpeed depends on the ninja package
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin", scripts]))
    use_installed_ninja()
    assert shutil.which("ninja") == str(Path(scripts) / "ninja")
    assert os.environ["PATH"].split(os.pathsep) == [scripts, "/usr/bin", "/bin"]
