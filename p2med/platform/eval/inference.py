"""Batch inference with Ray Data: benchmark samples -> generated answers.

The samples become a Ray Dataset; `map_batches` sends batches to a pool of actors that
each hold the model (loaded once per actor, LoRA merged, on a GPU when the actor has one).
Samples are sorted by task first, so a batch holds answers of similar length and no row
waits long for the longest. A sample whose generation fails is answered with "" and the
reason, and the run goes on.
"""

from __future__ import annotations

import time
from typing import Any

import ray
import torch

from p2med.model.checkpoint import load_model
from p2med.platform.data.tasks import TASKS
from p2med.platform.eval.answering import Answering
from p2med.platform.eval.benchmark import BenchSample
from p2med.platform.eval.settings import InferenceSettings
from p2med.platform.storage import StorageSettings, resolve


def answer(
    runs: dict[str, list[BenchSample]],
    model_uri: str,
    storage: StorageSettings,
    shapes: dict[str, tuple[int, ...]],
    config: InferenceSettings,
) -> dict[str, list[tuple[str, str | None]]]:
    """Per run name, the (answer, failure reason or None) of each of its samples, in order."""
    rows = [_row(run, i, sample) for run, samples in runs.items() for i, sample in enumerate(samples)]
    rows.sort(key=lambda r: (TASKS.index(r["task"]), len(r["prompt"])))
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, config.replicas * 4))
    predictor_args = {"model_uri": model_uri, "storage": storage, "shapes": shapes, "config": config}
    answered = dataset.map_batches(
        Predictor,
        fn_constructor_kwargs=predictor_args,
        batch_size=config.batch_size,
        batch_format="pandas",
        concurrency=config.replicas,
        num_cpus=config.cpus_per_replica,
        num_gpus=config.gpus_per_replica,
    )
    out = {run: [("", "not answered")] * len(samples) for run, samples in runs.items()}
    done, started = 0, time.monotonic()
    for batch in answered.iter_batches(batch_size=None, batch_format="pandas"):
        for run, index, text, failed in zip(
            batch["run"], batch["index"], batch["answer"], batch["failed"], strict=True
        ):
            out[run][int(index)] = (text, failed or None)
        done += len(batch)
        print(f"eval: {done}/{len(rows)} answers ({time.monotonic() - started:.0f} s)", flush=True)
    return out


def _row(run: str, index: int, sample: BenchSample) -> dict[str, Any]:
    return {
        "run": run,
        "index": index,
        "task": sample.task,
        "prompt": sample.prompt,
        "xray": sample.xray,
        "ct": sample.ct,
    }


class Predictor:
    """Ray Data actor: a batch of samples -> their answers (`answering.Answering`)."""

    def __init__(
        self,
        model_uri: str,
        storage: StorageSettings,
        shapes: dict[str, tuple[int, ...]],
        config: InferenceSettings,
    ) -> None:
        location = resolve(model_uri, storage)
        cuda = config.gpus_per_replica > 0 and torch.cuda.is_available()
        device = torch.device("cuda") if cuda else None
        model, tokenizer = load_model(location.uri, fs=location.fs, merge=True, device=device)
        if cuda:
            model = model.to(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        self.answering = Answering(model, tokenizer, shapes, config.max_new_tokens)

    def __call__(self, batch: Any) -> Any:
        """batch: a pandas DataFrame of `_row`s -> run, index, answer, failed."""
        answers = self.answering.answer(batch.to_dict("records"))
        batch = batch[["run", "index"]].copy()
        batch["answer"] = [text for text, _ in answers]
        batch["failed"] = [reason for _, reason in answers]
        return batch
