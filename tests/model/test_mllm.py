"""The interleaved forward pass: image slots, masks, labels, padding, bad input, gradients
and gradient checkpointing."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from p2med.model.interleave import IGNORE_INDEX, Images, expanded_length
from p2med.model.presets import tiny
from p2med.model.stages import apply_stage
from p2med.model.tokenizer import IMAGE_TOKEN
from tests.model.conftest import MIXED_TEXTS, cts, mixed_images, right_padded, some_findings, xrays


def test_forward_on_a_mixed_batch(model, tokenizer):
    ids, mask = right_padded(tokenizer, MIXED_TEXTS)
    out = model(ids, mask, images=mixed_images())
    length = expanded_length(ids, model.image_token_id, model.image_slots)
    assert out.logits.shape == (4, length, model.llm.config.vocab_size) and out.loss is None
    trained = model(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX), mixed_images())
    assert torch.isfinite(trained.loss) and trained.logits is None


def test_the_loss_is_the_llms_own_next_token_loss(model, tokenizer):
    """The LM head runs on the labelled positions alone; the loss is what the LLM computes
    from the logits of every position."""
    ids, mask = right_padded(tokenizer, MIXED_TEXTS)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX  # a prompt that is no target
    model.eval()
    x = model.embed(ids, mask, labels, mixed_images())
    full = model.llm(
        inputs_embeds=x.inputs_embeds,
        attention_mask=x.attention_mask,
        position_ids=x.position_ids,
        labels=x.labels,
        use_cache=False,
    ).loss
    torch.testing.assert_close(model(ids, mask, labels, mixed_images()).loss, full)


def test_a_batch_without_targets_gives_a_zero_that_reaches_the_llm(model, tokenizer):
    ids, mask = right_padded(tokenizer, MIXED_TEXTS)
    model.zero_grad()
    loss = model(ids, mask, torch.full_like(ids, IGNORE_INDEX), mixed_images()).loss
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None for p in model.llm.parameters() if p.requires_grad)


def test_each_placeholder_holds_its_images_latents_in_reading_order(model, tokenizer):
    ids, mask = right_padded(tokenizer, MIXED_TEXTS)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    images = mixed_images()
    x = model.embed(ids, mask, labels, images)
    latents = model.encode_images(images)  # (4 images, N + K, D): xray0, ct0, xray1, ct1
    n = model.image_slots
    image_id = model.image_token_id
    expected_order = {0: [0], 1: [1], 3: [2, 3]}
    for row, image_indexes in expected_order.items():
        placeholders = (ids[row] == image_id).nonzero().flatten().tolist()
        for k, (col, image) in enumerate(zip(placeholders, image_indexes, strict=True)):
            start = col + k * (n - 1)  # earlier placeholders of the row pushed this one right
            assert torch.equal(x.inputs_embeds[row, start : start + n], latents[image])
            assert x.labels[row, start : start + n].eq(IGNORE_INDEX).all()
            assert x.attention_mask[row, start : start + n].eq(1).all()
    # text labels survive in order, and nothing else is labelled
    for row in range(4):
        kept = x.labels[row][x.labels[row] != IGNORE_INDEX]
        want = labels[row][(labels[row] != IGNORE_INDEX) & (ids[row] != image_id)]
        assert torch.equal(kept, want)
        assert x.attention_mask[row].sum() == mask[row].sum() + (ids[row] == image_id).sum() * (n - 1)


def test_padding_does_not_change_a_samples_logits(model, tokenizer):
    texts = [MIXED_TEXTS[1], MIXED_TEXTS[3]]  # a short CT sample next to a longer two-image one
    ids, mask = right_padded(tokenizer, texts)
    both = model(ids, mask, images=Images([["ct"], ["xray", "ct"]], xray=xrays(1), ct=cts(2)))
    alone_ids, alone_mask = right_padded(tokenizer, texts[:1])
    alone = model(alone_ids, alone_mask, images=Images([["ct"]], ct=cts(2)[:1]))
    length = alone.logits.shape[1]
    torch.testing.assert_close(both.logits[0, :length], alone.logits[0], atol=1e-5, rtol=1e-4)


def test_text_only_samples_take_the_llms_own_path(model, tokenizer):
    ids, mask = right_padded(tokenizer, ["Impression: pneumonia.", "No pleural effusion seen today."])
    ours = model(ids, mask).logits
    plain = model.llm(input_ids=ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()  # padding positions differ (zeros vs the pad embedding) and are masked anyway
    torch.testing.assert_close(ours[real], plain[real], atol=1e-5, rtol=1e-4)


def test_images_from_a_stage_dataset_batch():
    batch = {
        "input_ids": torch.zeros(3, 5, dtype=torch.long),
        "xray": xrays(3),
        "ct": cts(3),
        "has_xray": torch.tensor([1, 0, 1]),
        "has_ct": torch.tensor([0, 1, 1]),
    }
    images = Images.from_batch(batch)
    assert images.kinds == [["xray"], ["ct"], ["xray", "ct"]]
    assert torch.equal(images.xray, batch["xray"][[0, 2]])
    assert torch.equal(images.ct, batch["ct"][[1, 2]])
    text_only = Images.from_batch({"input_ids": torch.zeros(2, 5, dtype=torch.long)})
    assert text_only.kinds == [[], []] and text_only.xray is None


@pytest.mark.parametrize(
    ("text", "images", "message"),
    [
        (f"{IMAGE_TOKEN} a", Images([["xray"]], xray=torch.rand(1, 64, 64)), "X-ray pixels must be"),
        (f"{IMAGE_TOKEN} a", Images([["xray"]], xray=torch.rand(128, 128)), "X-ray pixels must be"),
        (f"{IMAGE_TOKEN} a", Images([["ct"]], ct=torch.rand(1, 8, 64, 64)), "CT volumes must be"),
        (f"{IMAGE_TOKEN} a", Images([["ct"]], ct=torch.rand(16, 64, 64)), "CT volumes must be"),
        (
            f"{IMAGE_TOKEN}{IMAGE_TOKEN} a",
            Images([["xray"]], xray=xrays(1)),
            "2 <image> placeholders but 1 images",
        ),
        (
            f"{IMAGE_TOKEN} a",
            Images([["xray", "ct"]], xray=xrays(1), ct=cts(1)),
            "1 <image> placeholders but 2",
        ),
        ("no placeholder", Images([["xray"]], xray=xrays(1)), "0 <image> placeholders but 1 images"),
        (f"{IMAGE_TOKEN} a", Images([["xray"]], xray=xrays(2)), "name 1 xray images but 2 are given"),
        (f"{IMAGE_TOKEN} a", Images([["mri"]]), "unknown image kinds"),
        (f"{IMAGE_TOKEN} a", None, "1 <image> placeholders but 0 images"),
    ],
)
def test_bad_images_are_named(model, tokenizer, text, images, message):
    ids, mask = right_padded(tokenizer, [text])
    with pytest.raises(ValueError, match=message):
        model(ids, mask, images=images)


def test_empty_and_overlong_prompts_are_refused(model, tokenizer):
    with pytest.raises(ValueError, match="L > 0"):
        model(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long))
    ids, _ = right_padded(tokenizer, ["a b c"])
    with pytest.raises(ValueError, match="sample 0 is empty"):
        model(ids, torch.zeros_like(ids))
    long = torch.full((1, model.context_length - 10), 7)
    long[0, :2] = model.image_token_id  # 2 images push it past the context
    with pytest.raises(ValueError, match="context is 1024"):
        model(long, torch.ones_like(long), images=Images([["xray", "xray"]], xray=xrays(2)))


@pytest.mark.parametrize(
    ("stage", "shown"),
    [
        (3, "text only"),
        (2, "X-rays only"),
        (2, "CTs only"),
        (3, "X-rays only"),
        (3, "CTs only"),
        (3, "a mix"),
        (2, "several images a sample"),
    ],
)
def test_every_trainable_parameter_gets_a_gradient_whatever_the_batch_shows(model, tokenizer, stage, shown):
    """Distributed training (DeepSpeed ZeRO) needs the same parameters to get gradients on
    every rank, whatever mix of images a rank's batch holds; and no encoder may run on an
    empty batch (tests/conftest.py: attention behaves as on CUDA)."""
    if shown == "text only":
        texts, images = ["Cough and fever.", "Clear lungs."], Images.none(2)
    elif shown == "X-rays only":
        texts, images = [f"{IMAGE_TOKEN} Chest X-ray."] * 2, Images([["xray"], ["xray"]], xray=xrays(2))
    elif shown == "CTs only":
        texts, images = [f"{IMAGE_TOKEN} Chest CT."] * 2, Images([["ct"], ["ct"]], ct=cts(2))
    elif shown == "a mix":
        texts, images = MIXED_TEXTS, mixed_images()
    else:
        texts = [f"{IMAGE_TOKEN}{IMAGE_TOKEN} Two films.", f"{IMAGE_TOKEN}{IMAGE_TOKEN} CT, then an X-ray."]
        images = Images([["xray", "xray"], ["ct", "xray"]], xray=xrays(3), ct=cts(1))
    ids, mask = right_padded(tokenizer, texts)
    apply_stage(model, stage)
    shown_images = sum(map(len, images.kinds))
    # stage 2 adds the finding loss of its images
    findings = some_findings(shown_images, model.config.finding_labels) if stage == 2 else None
    out = model(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX), images, findings)
    (out.loss if findings is None else out.loss + out.finding_loss).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]


def test_gradient_checkpointing_recomputes_the_layers_and_changes_no_gradient(tokenizer):
    """Stage 2 (CLIP trains, and the LLM passes gradients back to the image latents): with
    checkpointing, an LLM layer and a CLIP layer each run again in the backward pass, and
    the loss and every gradient come out the same."""

    def step(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], Counter]:
        torch.manual_seed(0)
        model = tiny(tokenizer).train()
        apply_stage(model, 2)
        if checkpointing:
            model.enable_gradient_checkpointing()
        runs: Counter = Counter()
        # a layer's own hooks stay outside transformers' checkpoint, and the recompute stops
        # once it has what the backward needs: its MLP is entered again, not finished
        layers = {
            "llm": model.llm.get_base_model().model.layers[0].mlp,
            "clip": model.vision.clip.encoder.layers[0].mlp,
        }
        for name, layer in layers.items():
            layer.register_forward_pre_hook(lambda *_, name=name: runs.update([name]))
        ids, mask = right_padded(tokenizer, MIXED_TEXTS)
        findings = some_findings(4, model.config.finding_labels)  # mixed_images shows 4
        out = model(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX), mixed_images(), findings)
        (out.loss + out.finding_loss).backward()
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, runs

    loss, grads, runs = step(checkpointing=False)
    checkpointed_loss, checkpointed_grads, checkpointed_runs = step(checkpointing=True)
    assert runs == {"llm": 1, "clip": 2} and checkpointed_runs == {"llm": 2, "clip": 4}  # CLIP: X-rays, CTs
    assert torch.allclose(loss, checkpointed_loss)
    for name, grad in grads.items():
        assert torch.allclose(grad, checkpointed_grads[name], atol=1e-6), name


def test_the_attention_kernel_is_chosen_at_run_time_and_changes_no_output(tokenizer):
    """`eager` instead of the default `sdpa`, in the LLM and in CLIP: the same loss."""
    torch.manual_seed(0)
    model = tiny(tokenizer).eval()
    ids, mask = right_padded(tokenizer, MIXED_TEXTS)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    with torch.no_grad():
        sdpa = model(ids, mask, labels, mixed_images()).loss
        model.use_attention("eager")
        eager = model(ids, mask, labels, mixed_images()).loss
    kernels = {model.llm.config._attn_implementation, model.vision.clip.config._attn_implementation}
    assert kernels == {"eager"}
    assert torch.allclose(sdpa, eager, atol=1e-5)
