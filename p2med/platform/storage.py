"""One way to name and reach every location the platform reads or writes.

A location is a URI: a local path (`data/raw`, `/abs/path`), `file:///abs/path`, or
`s3://bucket/prefix`. `resolve()` turns it into a `Location` that every job uses for every
read and write, whether the bytes live on local disk, AWS S3, MinIO or any other
S3-compatible store. S3 connection settings come from `StorageSettings` or, where a field is
unset there, from the standard AWS environment variables.

    loc = resolve("s3://bucket/raw", StorageSettings(endpoint_url="http://127.0.0.1:9000"))
    loc.join("reports.jsonl").write_text("...")
    ds = ray.data.read_parquet(loc.arrow_path(), filesystem=loc.arrow_filesystem())
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlparse

import fsspec
from pydantic import Field, SecretStr

from p2med.platform.config import Settings
from p2med.platform.errors import StorageError


class StorageSettings(Settings):
    """Connection settings for `s3://` locations; local paths ignore them."""

    endpoint_url: str | None = None
    """S3 endpoint (e.g. http://127.0.0.1:9000); unset: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS."""
    region: str | None = None
    """S3 region; unset: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1."""
    access_key_id: str | None = None
    """Access key; unset: $AWS_ACCESS_KEY_ID, else the AWS credential chain (profile, instance role)."""
    secret_access_key: SecretStr | None = None
    """Secret key; unset: $AWS_SECRET_ACCESS_KEY. Never printed."""
    session_token: SecretStr | None = None
    """Session token for temporary credentials; unset: $AWS_SESSION_TOKEN."""
    anonymous: bool = False
    """Access public buckets without credentials."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """Seconds to wait for a connection before reporting the endpoint unreachable."""
    max_attempts: int = Field(3, ge=1)
    """Attempts per S3 request before giving up (retries transient errors)."""

    def resolved(self) -> StorageSettings:
        """This config with unset fields filled from the standard AWS environment variables."""

        def env(*names: str) -> str | None:
            return next((os.environ[n] for n in names if os.environ.get(n)), None)

        def secret(value: SecretStr | None, name: str) -> SecretStr | None:
            if value is not None:
                return value
            raw = env(name)
            return SecretStr(raw) if raw else None

        return self.model_copy(
            update={
                "endpoint_url": self.endpoint_url or env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
                "region": self.region or env("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
                "access_key_id": self.access_key_id or env("AWS_ACCESS_KEY_ID"),
                "secret_access_key": secret(self.secret_access_key, "AWS_SECRET_ACCESS_KEY"),
                "session_token": secret(self.session_token, "AWS_SESSION_TOKEN"),
            }
        )


def _reveal(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.lru_cache(maxsize=16)
def _s3_filesystem(storage: StorageSettings) -> fsspec.AbstractFileSystem:
    import s3fs

    return s3fs.S3FileSystem(
        key=storage.access_key_id,
        secret=_reveal(storage.secret_access_key),
        token=_reveal(storage.session_token),
        anon=storage.anonymous,
        endpoint_url=storage.endpoint_url,
        client_kwargs={"region_name": storage.region},
        config_kwargs={
            "connect_timeout": storage.connect_timeout_s,
            "retries": {"max_attempts": storage.max_attempts, "mode": "standard"},
        },
        # Listings change under us (other writers, our own reruns): always ask the store.
        use_listings_cache=False,
        skip_instance_cache=True,
    )


@dataclass(frozen=True)
class Location:
    """A file or folder on local disk or in an S3 bucket.

    Attributes:
        uri: canonical form: an absolute local path, or `s3://bucket/key`.
        path: the same location as the filesystem spells it (no scheme).
        fs: the fsspec filesystem that reaches it.
        storage: the resolved connection settings (for S3; also handed to workers).
    """

    uri: str
    path: str
    fs: fsspec.AbstractFileSystem
    storage: StorageSettings

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> Location:
        """The location of `parts` below this one (`/`-separated on every filesystem)."""
        suffix = "/".join(p.strip("/") for p in parts if p)
        return Location(
            uri=f"{self.uri.rstrip('/')}/{suffix}",
            path=f"{self.path.rstrip('/')}/{suffix}",
            fs=self.fs,
            storage=self.storage,
        )

    def __str__(self) -> str:
        return self.uri

    # --- reads -------------------------------------------------------------------------
    def exists(self) -> bool:
        with self._errors("check"):
            return self.fs.exists(self.path)

    def is_dir(self) -> bool:
        with self._errors("check"):
            return self.fs.isdir(self.path)

    def read_bytes(self) -> bytes:
        with self._errors("read"):
            return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def is_empty(self) -> bool:
        """True if nothing is stored at or below this location (one listing request)."""
        with self._errors("list"):
            return not self.fs.exists(self.path) or (self.fs.isdir(self.path) and not self.fs.ls(self.path))

    def list_files(self) -> list[str]:
        """Every file below this folder, as sorted paths relative to it ([] if absent)."""
        with self._errors("list"):
            if not self.fs.exists(self.path):
                return []
            root = self.path.rstrip("/") + "/"
            found = self.fs.find(self.path)
        return sorted(p[len(root) :] if p.startswith(root) else p for p in found)

    @contextlib.contextmanager
    def open(self, mode: str = "rb") -> Iterator[IO[Any]]:
        """A file object for reading (`rb`, `r`) or writing (`wb`, `w`).

        A write lands under the final name only when the block ends without an error, so
        readers never see a half-written file: local files go through a temporary file in
        the same folder, S3 objects through a local spool uploaded at the end. Storage
        failures raise `StorageError`; errors of the caller's own code pass through.
        """
        if "r" in mode:
            with self._errors("read"):
                f = self.fs.open(self.path, mode)
            with f:
                yield f
        elif self.is_s3:
            with tempfile.NamedTemporaryFile(mode, prefix="p2med-upload-") as spool:
                yield spool
                spool.flush()
                with self._errors("write"):
                    self.fs.put_file(spool.name, self.path)
        else:
            with self._errors("write"):
                folder = os.path.dirname(self.path)
                os.makedirs(folder, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
                os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes files private (0600)
            try:
                with os.fdopen(fd, mode) as f:
                    yield f
                with self._errors("write"):
                    os.replace(tmp, self.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    # --- writes ------------------------------------------------------------------------
    def write_bytes(self, data: bytes) -> None:
        """Write the whole file at once; readers see the old file or the new one."""
        if self.is_s3:  # one PUT: the object appears whole or not at all
            with self._errors("write"):
                self.fs.pipe_file(self.path, data)
            return
        with self.open("wb") as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def create(self, data: bytes) -> bool:
        """Write this file only if it does not exist yet, in one step two writers cannot
        both win (an exclusive create on local disk, a conditional write on S3). Returns
        whether this call wrote it."""
        with self._errors("write"):
            try:
                if self.is_s3:
                    with self.fs.open(self.path, "xb") as f:
                        f.write(data)
                else:
                    os.makedirs(os.path.dirname(self.path), exist_ok=True)
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
            except FileExistsError:
                return False
        return True

    def remove(self) -> None:
        """Delete this file or folder and everything below it; absent is fine."""
        with self._errors("delete"):
            if self.fs.exists(self.path):
                self.fs.rm(self.path, recursive=True)

    # --- Ray Data / pyarrow -------------------------------------------------------------
    def arrow_filesystem(self) -> Any:
        """The pyarrow filesystem for Ray Data readers and writers (`filesystem=`)."""
        from pyarrow import fs as pafs

        if not self.is_s3:
            return pafs.LocalFileSystem()
        s = self.storage
        kwargs: dict[str, Any] = {
            "region": s.region,
            "connect_timeout": s.connect_timeout_s,
            "anonymous": s.anonymous,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s.max_attempts),
        }
        if not s.anonymous:
            kwargs |= {
                "access_key": s.access_key_id,
                "secret_key": _reveal(s.secret_access_key),
                "session_token": _reveal(s.session_token),
            }
        if s.endpoint_url:
            parsed = urlparse(s.endpoint_url)
            kwargs |= {"endpoint_override": parsed.netloc, "scheme": parsed.scheme or "https"}
        return pafs.S3FileSystem(**kwargs)

    def arrow_path(self) -> str:
        """This location as the pyarrow filesystem spells it (`bucket/key` or a local path)."""
        return self.path

    # --- errors -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(describe_storage_error(exc, action, self)) from exc


def resolve(uri: str, storage: StorageSettings | None = None) -> Location:
    """The `Location` a URI names: local path, `file://` URI or `s3://bucket/key`."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"location {uri!r} is empty; give a local path or an s3:// URI")
    parsed = urlparse(uri)
    storage = (storage or StorageSettings()).resolved()
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"location {uri!r} names no bucket; use s3://BUCKET/PREFIX")
        key = parsed.path.strip("/")
        path = f"{parsed.netloc}/{key}" if key else parsed.netloc
        return Location(uri=f"s3://{path}", path=path, fs=_s3_filesystem(storage), storage=storage)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(
                f"location {uri!r} names host '{parsed.netloc}'; a file URI is file:///absolute/path"
            )
        local = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise StorageError(
            f"location {uri!r} has unsupported scheme '{parsed.scheme}://'; "
            "use a local path, file:// or s3://"
        )
    else:
        local = uri
    local = os.path.abspath(os.path.expanduser(local))
    return Location(uri=local, path=local, fs=fsspec.filesystem("file"), storage=storage)


def check_writable(loc: Location) -> None:
    """Fail early, with a clear message, if `loc` cannot be written (bucket missing,
    endpoint unreachable, bad credentials, read-only or non-directory local path)."""
    if not loc.is_s3 and os.path.exists(loc.path) and not os.path.isdir(loc.path):
        raise StorageError(f"cannot write to {loc.uri}: it is a file, not a folder")
    probe = loc.join(".p2med-write-probe")
    with loc._errors("write"):  # name the location the user gave, not the probe
        if not loc.is_s3:
            os.makedirs(loc.path, exist_ok=True)
        probe.fs.pipe_file(probe.path, b"")
        probe.fs.rm(probe.path)


def describe_storage_error(exc: BaseException, action: str, loc: Location) -> str:
    """One line saying why `action` on `loc` failed, without credentials or tracebacks."""
    where = loc.uri
    text = " ".join(str(exc).split()) or type(exc).__name__
    lowered = text.lower()
    if loc.is_s3:
        bucket = loc.path.split("/", 1)[0]
        endpoint = loc.storage.endpoint_url or "AWS S3"
        if "nosuchbucket" in lowered or "bucket does not exist" in lowered:
            return f"cannot {action} {where}: bucket '{bucket}' does not exist at {endpoint}"
        if any(
            s in lowered
            for s in (
                "could not connect",
                "connect timeout",
                "cannot connect",
                "connection refused",
            )
        ):
            return f"cannot {action} {where}: S3 endpoint {endpoint} is unreachable"
        if any(s in lowered for s in ("accessdenied", "access denied", "forbidden")):
            return f"cannot {action} {where}: access denied by {endpoint}; check the credentials"
        if any(s in lowered for s in ("invalidaccesskeyid", "signaturedoesnotmatch")):
            return f"cannot {action} {where}: {endpoint} rejected the credentials"
        if "unable to locate credentials" in lowered or "nocredentials" in lowered:
            return (
                f"cannot {action} {where}: no S3 credentials; set storage.access_key_id and "
                "storage.secret_access_key or the AWS_* environment variables"
            )
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
    ):
        return f"cannot {action} {where}: permission denied (not writable)"
    if isinstance(exc, NotADirectoryError):
        return f"cannot {action} {where}: a parent of it is a file, not a folder"
    if isinstance(exc, FileNotFoundError):
        return f"cannot {action} {where}: not found"
    return f"cannot {action} {where}: {text[:300]}"
