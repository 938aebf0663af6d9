"""The finding loss of stages 2 and 3: confident right answers score low, wrong ones high,
unlabelled images count for nothing, and the model refuses targets that do not match its
images."""

from __future__ import annotations

import math

import pytest
import torch

from p2med.model.alignment import FindingHead, finding_loss
from p2med.model.checkpoint import load_model, save_model
from p2med.model.interleave import IGNORE_INDEX, Images
from p2med.model.presets import build_model, tiny_config
from tests.model.conftest import right_padded, xrays


def test_right_answers_give_a_low_loss_and_wrong_ones_a_high_one():
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    confident = (targets * 2 - 1) * 20
    assert finding_loss(confident, targets) < 1e-6
    assert finding_loss(-confident, targets) > 15
    assert math.isclose(finding_loss(torch.zeros(2, 3), targets).item(), math.log(2), rel_tol=1e-6)


def test_unlabelled_images_carry_no_loss():
    """NaN rows (an image without a report) drop out; with none labelled the loss is a zero
    that still reaches the head, as ZeRO-2 needs on every rank."""
    targets = torch.tensor([[1.0, 0.0, 1.0], [math.nan] * 3])
    logits = torch.tensor([[5.0, -5.0, 5.0], [-9.0, 9.0, -9.0]])
    assert torch.isclose(finding_loss(logits, targets), finding_loss(logits[:1], targets[:1]))
    head = FindingHead(latents=2, width=4, labels=3)
    loss = finding_loss(head(torch.randn(1, 2, 4)).logits, torch.full((1, 3), math.nan))
    assert loss.item() == 0.0
    loss.backward()
    assert head.classify.weight.grad is not None


def test_labels_follow_the_reading_order_of_the_images():
    """A batch's per-kind labels (B, K) become one row per image, sample by sample, X-ray
    before CT: the order `Images.from_batch` stacks the images in."""
    nan = [math.nan] * 2
    batch = {
        "input_ids": torch.zeros(3, 4, dtype=torch.long),
        "has_xray": torch.tensor([1, 0, 1]),
        "has_ct": torch.tensor([1, 1, 0]),
        "xray_findings": torch.tensor([[1.0, 0.0], nan, [0.0, 0.0]]),
        "ct_findings": torch.tensor([[0.0, 1.0], [1.0, 1.0], nan]),
    }
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert torch.equal(Images.findings_from_batch(batch), expected)


def test_the_head_reads_every_latent_position():
    """Location lies in which latent saw what: moving a signal between latents changes the
    logits, which a pooled head could not tell apart."""
    torch.manual_seed(0)
    head = FindingHead(latents=4, width=8, labels=3)
    latents = torch.randn(1, 4, 8)
    assert head(latents).logits.shape == (1, 3)
    assert not torch.allclose(head(latents).logits, head(latents[:, [1, 0, 2, 3]]).logits)


def test_the_verdict_reaches_the_llm_through_the_hint_and_the_slots():
    """The added hint starts silent and then adds the same embedded verdict to every latent
    of an image; after the latents come K slots, slot k = v_k * (identity_k + presence_k),
    where v_k is the head's decision (probability above 0.5): blank for the findings it
    does not see. The LLM's gradient reaches the classifier through both."""
    torch.manual_seed(0)
    head = FindingHead(latents=4, width=8, labels=3)
    latents = torch.randn(2, 4, 8)
    probs = torch.sigmoid(head(latents).logits)
    decided = (probs > 0.5).float()
    assert 0 < decided.sum() < decided.numel()  # both decisions occur
    read = head(latents).hinted
    assert read.shape == (2, 4 + 3, 8) and torch.equal(read[:, :4], latents)
    slots = decided[..., None] * (head.identity + head.presence)
    assert torch.allclose(read[:, 4:], slots, atol=1e-6)
    assert torch.equal(read[:, 4:][decided == 0], torch.zeros(int((decided == 0).sum()), 8))
    assert not torch.allclose(read[0, 4:], read[1, 4:])  # each image its own verdict
    torch.nn.init.normal_(head.hint.weight)
    added = head(latents).hinted[:, :4] - latents
    expected = head.hint(decided)
    assert torch.allclose(added, expected[:, None, :].expand_as(added), atol=1e-6)
    head(latents).hinted.sum().backward()
    verdict = (head.classify.weight, head.hint.weight, head.identity, head.presence)
    assert all(p.grad.abs().sum() > 0 for p in verdict)


def test_findings_must_match_the_images(model, tokenizer):
    ids, mask = right_padded(tokenizer, ["<image>\nReport.", "<image>\nReport."])
    images = Images([["xray"], ["xray"]], xray=xrays(2))
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    out = model(ids, mask, labels, images, torch.zeros(2, model.config.finding_labels))
    assert out.finding_loss is not None and out.loss is not None
    with pytest.raises(ValueError, match=r"findings must be \(images, 15\) = \(2, 15\); got \(1, 15\)"):
        model(ids, mask, labels, images, torch.zeros(1, model.config.finding_labels))


def test_vision_steps_give_the_same_finding_loss_without_the_llm(model, tokenizer):
    """Stage 2's vision steps (read_text=False) score the same latents as a full pass,
    never call the LLM, and give every vision parameter a gradient."""
    ids, mask = right_padded(tokenizer, ["<image>\nReport.", "Text only.", "<image>\nReport."])
    images = Images([["xray"], [], ["xray"]], xray=xrays(2))
    findings = torch.zeros(2, model.config.finding_labels)
    findings[0, 3] = 1.0
    model.eval()  # same latents in both passes
    full = model(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX), images, findings).finding_loss
    calls = []
    hook = model.llm.register_forward_hook(lambda *args: calls.append(1))
    try:
        alone = model(ids, mask, images=images, findings=findings, read_text=False)
    finally:
        hook.remove()
    assert not calls and alone.loss is None and alone.logits is None
    assert torch.allclose(alone.finding_loss, full)
    model.zero_grad()
    alone.finding_loss.backward()
    assert all(p.grad is not None for p in [*model.vision.parameters(), *model.alignment.parameters()])
    with pytest.raises(ValueError, match="needs findings"):
        model(ids, mask, images=images, read_text=False)


def test_a_lit_slot_starts_as_the_words_of_its_finding(model, tokenizer):
    labels = model.config.finding_labels
    phrases = [f"consolidation in the right lower lobe {i}" for i in range(labels)]
    model.ground_verdict_slots(phrases, tokenizer)
    embed = model.llm.get_input_embeddings()
    first = embed(torch.tensor(tokenizer(phrases[0], add_special_tokens=False).input_ids)).mean(0)
    torch.testing.assert_close(model.alignment.presence[0], first)
    with pytest.raises(ValueError, match="one phrase per finding label"):
        model.ground_verdict_slots(phrases[:-1], tokenizer)


@pytest.mark.parametrize("alignment", ["head", "none"])
def test_without_slots_the_llm_reads_the_latents_alone(tokenizer, tmp_path, alignment):
    """`head` keeps the finding loss but feeds the LLM nothing of it; `none` has no head (the
    paper's architecture). Each saves and loads as what it is."""
    torch.manual_seed(0)
    model = build_model(tiny_config().replace(alignment=alignment), tokenizer).eval()
    assert model.image_slots == model.config.resampler.latents
    ids, mask = right_padded(tokenizer, ["<image>\nReport."])
    images = Images([["xray"]], xray=xrays(1))
    findings = torch.zeros(1, model.config.finding_labels)
    latents = model._resampled(images)
    torch.testing.assert_close(model.encode_images(images), latents)  # nothing added to them
    if alignment == "head":
        assert model(ids, mask, images=images, findings=findings, read_text=False).finding_loss > 0
        with pytest.raises(ValueError, match="no verdict slots"):
            model.ground_verdict_slots(["words"] * model.config.finding_labels, tokenizer)
    else:
        assert not list(model.alignment.parameters())
        with pytest.raises(ValueError, match="no finding head"):
            model(ids, mask, images=images, findings=findings)
    save_model(model, tokenizer, str(tmp_path / "m"))
    loaded, _ = load_model(str(tmp_path / "m"))
    assert loaded.config.alignment == alignment
    torch.testing.assert_close(loaded.encode_images(images), model.encode_images(images))
