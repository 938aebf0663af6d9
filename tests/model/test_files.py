"""Remote model folders: one cached copy per machine; uploads that never look complete early."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from p2med.model.files import CACHE_ENV, cached_copy, upload
from p2med.platform.storage import resolve


class CountingMemory(MemoryFileSystem):
    """fsspec's in-memory filesystem, counting folder downloads."""

    downloads = 0

    def get(self, *args, **kwargs):
        type(self).downloads += 1
        return super().get(*args, **kwargs)


def test_the_ranks_of_a_machine_copy_a_remote_base_once(tmp_path, monkeypatch):
    """Four ranks asking at once get one complete copy, made once (7B: 13.5 GB each time)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    CountingMemory.downloads = 0
    fs = CountingMemory()
    fs.pipe({"/base/config.json": b"{}", "/base/model.safetensors": bytes(16 << 20)})
    with ThreadPoolExecutor(4) as ranks:
        folders = list(ranks.map(lambda _: cached_copy("memory://base", fs), range(4)))
    assert len(set(folders)) == 1 and CountingMemory.downloads == 1
    assert sorted(os.listdir(folders[0])) == [".complete", "config.json", "model.safetensors"]
    assert os.path.getsize(os.path.join(folders[0], "model.safetensors")) == 16 << 20
    assert not [name for name in os.listdir(tmp_path / "cache") if ".partial-" in name]


@pytest.mark.s3
def test_an_upload_cut_short_does_not_look_complete(bucket, s3_storage, tmp_path):
    """The folder's config goes last and an overwrite removes the old one first: a reader
    (resume, serving) never takes a folder without all of its weights for a whole one."""
    folder = resolve(f"s3://{bucket}/model", s3_storage)
    local = tmp_path / "model"
    local.mkdir()
    (local / "p2med_config.json").write_text("{}")
    (local / "weights.safetensors").write_bytes(b"w")
    upload(str(local), folder.uri, folder.fs, last="p2med_config.json")
    assert folder.join("p2med_config.json").exists() and folder.join("weights.safetensors").exists()
    (local / "z.safetensors").symlink_to(tmp_path / "missing")  # unreadable: the copy stops there
    with pytest.raises(FileNotFoundError):
        upload(str(local), folder.uri, folder.fs, last="p2med_config.json")
    assert folder.join("weights.safetensors").exists() and not folder.join("p2med_config.json").exists()
