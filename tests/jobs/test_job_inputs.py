"""The train and eval jobs, called as the CLI calls them but in this process: each hands
its locations to the platform under the right names, which refuses them before Ray starts.
The jobs on a local Ray: the quickstart test (test_quickstart.py)."""

from __future__ import annotations

import pytest
import ray

from p2med.jobs import eval as eval_job
from p2med.jobs import train as train_job
from p2med.platform.errors import P2MedError


def test_train_refuses_shards_without_an_ingest(tmp_path):
    ray_before = ray.is_initialized()  # other tests of the session may have started its Ray
    config = train_job.JobSettings(stage=2, shards=str(tmp_path / "shards"), output=str(tmp_path / "run"))
    with pytest.raises(P2MedError, match=rf"no manifest\.json at {tmp_path}/shards: run `p2med ingest`"):
        train_job.run(config)
    assert ray.is_initialized() == ray_before


def test_eval_refuses_a_model_folder_that_is_not_there(tmp_path):
    ray_before = ray.is_initialized()
    config = eval_job.JobSettings(
        model=str(tmp_path / "model"), shards=str(tmp_path / "shards"), out=str(tmp_path / "eval")
    )
    with pytest.raises(P2MedError, match=f"cannot evaluate: no model folder at {tmp_path}/model"):
        eval_job.run(config)
    assert ray.is_initialized() == ray_before
