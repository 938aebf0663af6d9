"""Storage round trips: the same code paths on local disk and on a real local S3 server."""

from __future__ import annotations

import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p2med.platform.errors import StorageError
from p2med.platform.storage import StorageSettings, check_writable, resolve
from tests.conftest import S3_KEY, S3_SECRET, free_port


def test_round_trip(location_uri):
    uri, storage = location_uri
    root = resolve(uri, storage)
    check_writable(root)
    assert root.list_files() == []
    root.join("a/b.bin").write_bytes(b"\x00\x01")
    root.join("notes.txt").write_text("héllo")
    with root.join("c/stream.txt").open("wb") as f:
        f.write(b"line\n")
    assert root.join("a/b.bin").read_bytes() == b"\x00\x01"
    assert root.join("notes.txt").read_text() == "héllo"
    assert root.join("c/stream.txt").exists()
    assert root.list_files() == ["a/b.bin", "c/stream.txt", "notes.txt"]
    root.join("a").remove()
    assert root.list_files() == ["c/stream.txt", "notes.txt"]
    assert not root.join("a/b.bin").exists()


def test_arrow_filesystem_reads_what_storage_wrote(location_uri):
    uri, storage = location_uri
    root = resolve(uri, storage)
    table = pa.table({"x": [1, 2, 3]})
    target = root.join("t/part-0.parquet")
    with target.open("wb") as f:
        pq.write_table(table, f)
    back = pq.read_table(target.arrow_path(), filesystem=target.arrow_filesystem())
    assert back.equals(table)


def test_failed_writes_leave_nothing_behind(location_uri):
    uri, storage = location_uri
    target = resolve(uri, storage).join("half.bin")
    with pytest.raises(RuntimeError, match="caller failed"), target.open("wb") as f:
        f.write(b"partial")
        raise RuntimeError("caller failed")  # not a storage error: it passes through
    assert not target.exists()
    assert resolve(uri, storage).list_files() == []


def test_local_files_are_as_readable_as_the_umask_allows(tmp_path):
    target = resolve(str(tmp_path / "f.txt"))
    target.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target.path).st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_uri_forms(tmp_path):
    assert resolve(str(tmp_path)).uri == str(tmp_path)
    assert resolve(f"file://{tmp_path}").uri == str(tmp_path)
    assert resolve("file:///tmp/with%20space").uri == "/tmp/with space"
    with pytest.raises(StorageError, match="names host 'data'"):
        resolve("file://data/raw")
    assert resolve("s3://bucket/a/b/").uri == "s3://bucket/a/b"
    assert resolve("s3://bucket").join("x", "y.txt").uri == "s3://bucket/x/y.txt"
    with pytest.raises(StorageError, match="unsupported scheme 'gs://'"):
        resolve("gs://bucket/x")
    with pytest.raises(StorageError, match="names no bucket"):
        resolve("s3:///x")


def test_settings_come_from_aws_environment_when_unset(monkeypatch, s3_endpoint, bucket):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    loc = resolve(f"s3://{bucket}/env.txt")
    assert loc.storage.endpoint_url == s3_endpoint and loc.storage.region == "eu-west-1"
    loc.write_text("from env")
    assert loc.read_text() == "from env"
    # The config wins over the environment.
    assert resolve("s3://b/x", StorageSettings(region="ap-south-1")).storage.region == "ap-south-1"


def test_missing_bucket_is_named(s3_storage):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        check_writable(resolve("s3://no-such-bucket/raw", s3_storage))


def test_unreachable_endpoint_is_named():
    storage = StorageSettings(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="k",
        secret_access_key="s",
        connect_timeout_s=1,
        max_attempts=1,
    )
    with pytest.raises(StorageError, match="is unreachable"):
        check_writable(resolve("s3://bucket/raw", storage))


def test_unwritable_local_locations(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(StorageError, match="it is a file, not a folder"):
        check_writable(resolve(str(a_file)))
    with pytest.raises(StorageError, match="a parent of it is a file"):
        check_writable(resolve(str(a_file / "below")))
    with pytest.raises(StorageError, match=r"cannot write /proc/p2med: "):
        check_writable(resolve("/proc/p2med"))


def test_secrets_stay_out_of_reprs():
    storage = StorageSettings(secret_access_key="very-secret").resolved()
    assert "very-secret" not in repr(storage) and "very-secret" not in str(resolve("s3://b", storage))


@pytest.mark.slow  # a local Ray
def test_ray_data_reads_and_writes_through_the_arrow_filesystem(location_uri, ray_local):
    uri, storage = location_uri
    out = resolve(uri, storage).join("ds")
    ray_local.data.range(20).write_parquet(out.arrow_path(), filesystem=out.arrow_filesystem())
    back = ray_local.data.read_parquet(out.arrow_path(), filesystem=out.arrow_filesystem())
    assert sorted(r["id"] for r in back.take_all()) == list(range(20))


def test_is_empty(location_uri):
    uri, storage = location_uri
    root = resolve(uri, storage)
    assert root.is_empty()
    root.join("deep/down/file.txt").write_text("x")
    assert not root.is_empty() and root.join("deep").is_dir()
    assert not root.join("deep/down/file.txt").is_empty()


def test_create_writes_a_file_only_once(location_uri):
    """What the ingest's lock rests on: of two writers, one creates the file."""
    uri, storage = location_uri  # local disk and the S3 server (a conditional write)
    lock = resolve(uri, storage).join("locks", "a.lock")
    assert lock.create(b"first") and not lock.create(b"second")
    assert lock.read_bytes() == b"first"
    lock.remove()
    assert lock.create(b"third")
