"""The training loop's batches: every row once per pass, batches of one size only, and
micro-batches of similar length that give the whole batch's loss and gradient."""

from __future__ import annotations

import pytest
import ray
import torch

from p2med.model.interleave import IGNORE_INDEX
from p2med.model.presets import tiny
from p2med.model.stages import apply_stage
from p2med.model.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer
from p2med.platform.data.vocabulary import FINDING_LABELS
from p2med.platform.train.loop import endless_batches
from p2med.platform.train.settings import DataSettings, TrainSettings
from p2med.platform.train.step import length_sorted_parts, stage_loss
from tests.model.conftest import CORPUS, cts, right_padded, xrays

FINDINGS = len(FINDING_LABELS)


@pytest.mark.slow  # a local Ray
def test_every_row_comes_once_per_pass_in_whole_batches_only(ray_local):
    data = ray.data.from_items([{"id": i} for i in range(18)])  # 4 batches of 4, 2 rows over
    settings = TrainSettings(data=DataSettings(shuffle_buffer=8))
    stream = endless_batches(data, 4, settings, torch.device("cpu"))
    first, second = [next(stream)["id"] for _ in range(4)], [next(stream)["id"] for _ in range(4)]
    assert all(len(batch) == 4 for batch in first + second)
    for one_pass in (first, second):
        ids = torch.cat(one_pass).tolist()
        assert len(set(ids)) == 16 and set(ids) <= set(range(18))
    assert torch.cat(first).tolist() != torch.cat(second).tolist()  # reshuffled each pass


@pytest.mark.slow  # a local Ray
def test_too_little_data_for_one_batch_is_refused(ray_local):
    stream = endless_batches(ray.data.from_items([{"id": 0}]), 4, TrainSettings(), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="fewer than 4 samples"):
        next(stream)


def stage_batch(tokenizer, images: bool) -> dict[str, torch.Tensor]:
    """A stage-dataset batch of 6 rows of different lengths, prompt tokens unlabelled; with
    `images`: X-ray, CT, both or no image, one image without a report (NaN findings)."""
    texts = [
        f"{IMAGE_TOKEN}\n{CORPUS[0]}",
        f"{IMAGE_TOKEN}\n{CORPUS[1]} {CORPUS[0]} {CORPUS[2]}",
        CORPUS[2],
        f"{IMAGE_TOKEN}{IMAGE_TOKEN}\n{CORPUS[1]}",
        f"{IMAGE_TOKEN}\n{CORPUS[0]} {CORPUS[1]}",
        f"{CORPUS[1]} {CORPUS[2]}",
    ]
    has_xray, has_ct = torch.tensor([1, 0, 0, 1, 1, 0]), torch.tensor([0, 1, 0, 1, 0, 0])
    if not images:  # stage 1: text only
        texts = [text.replace(IMAGE_TOKEN, "") for text in texts]
        has_xray, has_ct = has_xray * 0, has_ct * 0
    ids, mask = right_padded(tokenizer, texts)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :4] = IGNORE_INDEX  # a prompt
    labels[labels == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)] = IGNORE_INDEX
    findings = torch.eye(FINDINGS)[torch.arange(6) % FINDINGS]
    xray_findings = findings.clone()
    xray_findings[4] = float("nan")
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "xray": xrays(6),
        "has_xray": has_xray,
        "ct": cts(6),
        "has_ct": has_ct,
        "xray_findings": xray_findings,
        "ct_findings": findings.flip(0),
    }


@pytest.mark.parametrize("stage", [1, 3])
def test_micro_batches_give_the_whole_batchs_loss_and_gradient(stage):
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=600)
    torch.manual_seed(0)
    model = tiny(tokenizer).train()
    apply_stage(model, stage)
    batch = stage_batch(tokenizer, images=stage > 1)
    parts = length_sorted_parts(batch, 3)
    assert [len(part["input_ids"]) for part in parts] == [2, 2, 2]
    assert sum(part["input_ids"].shape[1] for part in parts) < 3 * batch["input_ids"].shape[1]

    def loss_and_grads(micro_batches: int) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = stage_loss(model, batch, stage, alignment_weight=1.0, micro_batches=micro_batches)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    whole, whole_grads = loss_and_grads(1)
    micro, micro_grads = loss_and_grads(3)
    assert micro == pytest.approx(whole, rel=1e-5)
    for got, want in zip(micro_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
