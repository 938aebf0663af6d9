"""Model folders on local disk or in object storage (any fsspec URL, e.g. s3://).

Hugging Face and peft read and write local folders only, so remote folders are copied to
a local cache on load and uploaded from a temporary folder on save.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
from filelock import FileLock

CACHE_ENV = "P2MED_MODEL_CACHE"
COMPLETE = ".complete"  # written last into a cached copy
# Files of a Hugging Face model folder that hold weights: what a tokenizer does not need.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def remote(uri: str, fs: fsspec.AbstractFileSystem | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of `uri` (`fs` when given, e.g. one with S3 credentials) and its path there."""
    if fs is None:
        return fsspec.core.url_to_fs(uri)
    return fs, fs._strip_protocol(uri)


def cached_copy(uri: str, fs: fsspec.AbstractFileSystem | None = None) -> str:
    """A local folder with the contents of `uri`: the folder itself when local, else a
    copy under $P2MED_MODEL_CACHE (default ~/.cache/p2med/models) made on first use. For
    pretrained bases, which do not change under one URI; checkpoints use `download`.

    One copy per machine: the training ranks of a node all ask at once, and the first
    copies while the others wait for it (a lock file). The copy is made in a folder of its
    own and renamed into place, so no reader sees it half written, and an interrupted one
    is made again."""
    if not is_remote(uri):
        return local_path(uri)
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "p2med" / "models"))
    target = root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if (target / COMPLETE).exists():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not (target / COMPLETE).exists():
            partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=root))
            try:
                download(uri, str(partial), fs)
                (partial / COMPLETE).touch()
                shutil.rmtree(target, ignore_errors=True)  # what an interrupted copy left
                partial.rename(target)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def upload(
    local: str, uri: str, fs: fsspec.AbstractFileSystem | None = None, last: str | None = None
) -> None:
    """Copy the local folder `local` to the remote folder `uri`. `last`, a file at the
    folder's top that says it is complete, is removed there first and copied after
    everything else: object stores write files in no set order, and a copy cut short
    must not look whole."""
    fs, path = remote(uri, fs)
    path = path.rstrip("/")
    if last is not None and fs.exists(f"{path}/{last}"):
        fs.rm_file(f"{path}/{last}")
    for root, _, names in os.walk(local):
        for name in names:
            source = os.path.join(root, name)
            relative = os.path.relpath(source, local).replace(os.sep, "/")
            if relative != last:
                fs.put_file(source, f"{path}/{relative}")
    if last is not None:
        fs.put_file(os.path.join(local, last), f"{path}/{last}")


def download(uri: str, local: str, fs: fsspec.AbstractFileSystem | None = None) -> None:
    """Copy the remote folder `uri` into the local folder `local`."""
    fs, path = remote(uri, fs)
    if not fs.isdir(path):
        raise FileNotFoundError(f"no model folder at {uri}")
    fs.get(path.rstrip("/") + "/", local.rstrip("/") + "/", recursive=True)


def copy_without_weights(uri: str, local: str, fs: fsspec.AbstractFileSystem | None = None) -> None:
    """Copy the files at the top of the model folder `uri` (local or remote) into the local
    folder `local`, leaving out weight files (`WEIGHT_SUFFIXES`): the tokenizer and configs
    of a pretrained LLM without its gigabytes (13 GB for a 7B model)."""
    fs, path = remote(uri, fs)
    if not fs.isdir(path):
        raise FileNotFoundError(f"no model folder at {uri}")
    os.makedirs(local, exist_ok=True)
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "file" and not name.endswith(WEIGHT_SUFFIXES):
            fs.get(entry["name"], os.path.join(local, name))
